"""``create_model``: the one way to build a cxrkit classifier, whatever the backbone."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from cxrkit.data.errors import CxrError
from cxrkit.models.backbones import BACKBONES, build_backbone
from cxrkit.models.heads import HEADS


class ChannelStem(nn.Module):
    """Grey B x 1 x H x W in [0, 1] -> B x C x H x W normalised per channel, exactly as an RGB-trained network saw
    a grey film (R = G = B, then its own per-channel mean/std). Lets an imported 3-channel model keep cxrkit's
    one-channel input contract and still give the probabilities its authors' code gives."""

    def __init__(self, mean, std):
        super().__init__()
        # buffers, not persistent: the bundle's spec (model.stem) is their one source of truth
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.expand(-1, self.mean.shape[1], -1, -1) - self.mean) / self.std


class CXRModel(nn.Module):
    """backbone -> feature map -> head (linear, class-wise attention or LSE pooling) [+ normal/abnormal head].

    ``forward(x)`` returns finding logits (B x C). ``forward_all(x)`` also returns the feature map, the attention
    maps (attention head) and the abnormality logit (normal head), for training, CAM and triage.
    """

    def __init__(self, arch: str, num_classes: int, *, in_chans: int = 1, head: str = "linear",
                 normal_head: bool = False, drop_rate: float = 0.0, stem: dict | None = None,
                 lse_r: float = 5.0):
        super().__init__()
        if head not in HEADS:
            raise CxrError(f"unknown head {head!r}; choose one of {sorted(HEADS)}")
        self.arch, self.num_classes, self.in_chans = arch, num_classes, in_chans
        self.head_type, self.has_normal_head, self.drop_rate = head, normal_head, drop_rate
        self.stem_spec = dict(stem) if stem else None
        self.stem = ChannelStem(stem["mean"], stem["std"]) if stem else None
        self.backbone, self.num_features = build_backbone(arch, len(stem["mean"]) if stem else in_chans)
        self.lse_r = float(lse_r)
        head_args = {"r": self.lse_r} if head == "lse" else {}
        self.head = HEADS[head](self.num_features, num_classes, drop_rate, **head_args)
        self.normal_head = nn.Linear(self.num_features, 1) if normal_head else None

    def spec(self) -> dict:
        """What the bundle stores to rebuild this model."""
        spec = {"arch": self.arch, "num_classes": self.num_classes, "in_chans": self.in_chans,
                "head": self.head_type, "normal_head": self.has_normal_head, "drop_rate": self.drop_rate}
        if self.stem_spec:
            spec["stem"] = self.stem_spec
        if self.head_type == "lse":
            spec["lse_r"] = self.lse_r
        return spec

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.stem(x) if self.stem is not None else x

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(self._stem(x))

    def forward_all(self, x: torch.Tensor) -> dict[str, torch.Tensor | None]:
        feats = self.backbone(self._stem(x))
        logits, attention = self.head(feats)
        abnormal = self.normal_head(feats.mean(dim=(2, 3))).squeeze(1) if self.normal_head is not None else None
        return {"logits": logits, "attention": attention, "abnormal_logit": abnormal, "features": feats}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(self._stem(x)))[0]


def list_models() -> list[str]:
    """Registered architecture names (any timm model also works as ``timm:<name>``)."""
    return sorted(BACKBONES)


def create_model(name: str, num_classes: int, pretrained: str | Path | None = None, *, in_chans: int = 1,
                 head: str = "linear", normal_head: bool = False, drop_rate: float = 0.0,
                 stem: dict | None = None, lse_r: float = 5.0) -> CXRModel:
    """Build a classifier. ``pretrained``: None (random init), a local weights file (torchvision/timm state dict,
    .pth or .safetensors), a cxrkit bundle directory (fine-tune from it), ``"KIND:FILE"`` with an import kind of
    :mod:`cxrkit.models.imports` (e.g. ``xrv-densenet121:weights.pt``: backbone weights, input stem and input
    normalisation of that source; the normalisation is then ``model.input_norm``), or ``"hub"`` (download; online
    only). ``stem``: ``{"mean": [...], "std": [...]}`` feeds a grey input to a multi-channel backbone
    (:class:`ChannelStem`)."""
    if name not in BACKBONES and not name.startswith("timm:"):
        raise CxrError(f"unknown architecture {name!r}; choose one of {list_models()} or 'timm:<timm model name>'")
    if num_classes < 1:
        raise CxrError(f"num_classes must be >= 1, got {num_classes}")
    imported = None
    if pretrained is not None and str(pretrained) != "hub":
        from cxrkit.models.imports import backbone_source

        imported = backbone_source(pretrained, arch=name)
        if imported is not None:
            if imported.arch != name:
                raise CxrError(f"--pretrained {pretrained} holds a {imported.arch} but the architecture is {name!r};"
                               f" pass --arch {imported.arch}")
            stem = imported.stem
    model = CXRModel(name, num_classes, in_chans=in_chans, head=head, normal_head=normal_head, drop_rate=drop_rate,
                     stem=stem, lse_r=lse_r)
    if pretrained is None:
        return model
    if imported is not None:
        model.backbone.load_state_dict(imported.backbone_state())
        model.input_norm = (imported.input["mean"], imported.input["std"])
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
