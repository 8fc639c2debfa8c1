"""``create_model``: the one way to build a cxrkit classifier, whatever the backbone."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from cxrkit.data.errors import CxrError
from cxrkit.models.backbones import BACKBONES, build_backbone
from cxrkit.models.heads import HEADS


class CXRModel(nn.Module):
    """backbone -> feature map -> head (linear or class-wise attention) [+ normal/abnormal head].

    ``forward(x)`` returns finding logits (B x C). ``forward_all(x)`` also returns the feature map, the attention
    maps (attention head) and the abnormality logit (normal head), for training, CAM and triage.
    """

    def __init__(self, arch: str, num_classes: int, *, in_chans: int = 1, head: str = "linear",
                 normal_head: bool = False, drop_rate: float = 0.0):
        super().__init__()
        if head not in HEADS:
            raise CxrError(f"unknown head {head!r}; choose one of {sorted(HEADS)}")
        self.arch, self.num_classes, self.in_chans = arch, num_classes, in_chans
        self.head_type, self.has_normal_head, self.drop_rate = head, normal_head, drop_rate
        self.backbone, self.num_features = build_backbone(arch, in_chans)
        self.head = HEADS[head](self.num_features, num_classes, drop_rate)
        self.normal_head = nn.Linear(self.num_features, 1) if normal_head else None

    def spec(self) -> dict:
        """What the bundle stores to rebuild this model."""
        return {"arch": self.arch, "num_classes": self.num_classes, "in_chans": self.in_chans,
                "head": self.head_type, "normal_head": self.has_normal_head, "drop_rate": self.drop_rate}

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward_all(self, x: torch.Tensor) -> dict[str, torch.Tensor | None]:
        feats = self.backbone(x)
        logits, attention = self.head(feats)
        abnormal = self.normal_head(feats.mean(dim=(2, 3))).squeeze(1) if self.normal_head is not None else None
        return {"logits": logits, "attention": attention, "abnormal_logit": abnormal, "features": feats}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))[0]


def list_models() -> list[str]:
    """Registered architecture names (any timm model also works as ``timm:<name>``)."""
    return sorted(BACKBONES)


def create_model(name: str, num_classes: int, pretrained: str | Path | None = None, *, in_chans: int = 1,
                 head: str = "linear", normal_head: bool = False, drop_rate: float = 0.0) -> CXRModel:
    """Build a classifier. ``pretrained``: None (random init), a local weights file (torchvision/timm state dict,
    .pth or .safetensors), a cxrkit bundle directory (fine-tune from it), or ``"hub"`` (download; online only)."""
    if name not in BACKBONES and not name.startswith("timm:"):
        raise CxrError(f"unknown architecture {name!r}; choose one of {list_models()} or 'timm:<timm model name>'")
    if num_classes < 1:
        raise CxrError(f"num_classes must be >= 1, got {num_classes}")
    model = CXRModel(name, num_classes, in_chans=in_chans, head=head, normal_head=normal_head, drop_rate=drop_rate)
    if pretrained is None:
        return model
    from cxrkit.models import pretrained as pt

    if str(pretrained) == "hub":
        pt.load_from_hub(model.backbone, name, in_chans)
    elif Path(pretrained).is_dir():
        from cxrkit.bundle.format import read_bundle_weights

        state = {k.removeprefix("backbone."): v for k, v in read_bundle_weights(pretrained).items()
                 if k.startswith("backbone.")}
        model.backbone.load_state_dict(state)
    else:
        pt.load_into_backbone(model.backbone, name, pt.read_state_dict(pretrained), in_chans)
    return model
