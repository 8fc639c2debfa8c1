"""Loading pretrained weights: local files first (no internet at run time), a hub only when asked and online."""
from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from cxrkit.data.errors import CxrError


class PretrainedError(CxrError):
    """Pretrained weights could not be found, read or matched to the architecture."""


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a torchvision/timm state dict (.pth/.pt/.bin) or a .safetensors file, never unpickling code."""
    path = Path(path)
    if not path.is_file():
        raise PretrainedError(f"pretrained weights file {path} does not exist; pass a local .pth/.safetensors file "
                              "(cxrkit never downloads weights unless pretrained='hub' and the machine is online)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any parse failure is the same user error
        raise PretrainedError(f"could not read pretrained weights {path}: {exc}") from exc
    for key in ("state_dict", "model", "model_state"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    if not isinstance(sd, dict):
        raise PretrainedError(f"{path} does not hold a state dict")
    return {re.sub(r"^(module\.|_orig_mod\.)+", "", k): v for k, v in sd.items() if isinstance(v, torch.Tensor)}


def _adapt_first_conv(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    if weight.shape[1] == in_chans:
        return weight
    if in_chans == 1:
        return weight.sum(dim=1, keepdim=True)  # a grey image is R=G=B, so summing is exact
    raise PretrainedError(f"cannot adapt a {weight.shape[1]}-channel first conv to {in_chans} channels")


def load_into_backbone(backbone: nn.Module, name: str, state: dict[str, torch.Tensor], in_chans: int) -> list[str]:
    """Load a torchvision/timm classification state dict into a cxrkit backbone; returns keys left unloaded."""
    own = backbone.state_dict()
    prefix = "features." if name in ("densenet121", "cxr_tiny") else "model."
    mapped = {}
    for k, v in state.items():
        if name == "densenet121":
            # old torchvision checkpoints write 'norm.1' where the module is now 'norm1'
            k = re.sub(r"\.(norm|relu|conv)\.(\d)", r".\1\2", k)
        key = k if k.startswith(prefix) else prefix + k
        if key in own:
            mapped[key] = v
    if not mapped:
        raise PretrainedError(f"no tensor of the pretrained file matches architecture {name!r}; is it the right file?")
    first_conv = next(k for k in own if k.endswith("weight") and own[k].ndim == 4)
    if first_conv in mapped:
        mapped[first_conv] = _adapt_first_conv(mapped[first_conv], in_chans)
    bad = [k for k, v in mapped.items() if v.shape != own[k].shape]
    if bad:
        raise PretrainedError(f"pretrained tensors do not fit {name!r}: {bad[:3]} (shape mismatch)")
    backbone.load_state_dict(mapped, strict=False)
    return sorted(set(own) - set(mapped))


def load_from_hub(backbone: nn.Module, name: str, in_chans: int) -> None:
    """Fetch ImageNet weights through timm/torchvision's hubs: only works online, says so clearly otherwise."""
    from cxrkit.models.backbones import TIMM_ALIASES

    try:
        if name == "densenet121":
            from torchvision.models import DenseNet121_Weights, densenet121

            state = densenet121(weights=DenseNet121_Weights.IMAGENET1K_V1).state_dict()
        else:
            import timm

            state = timm.create_model(TIMM_ALIASES.get(name, name.removeprefix("timm:")), pretrained=True).state_dict()
    except Exception as exc:  # noqa: BLE001
        raise PretrainedError(
            f"could not download ImageNet weights for {name!r} ({type(exc).__name__}: {exc}). This machine may be "
            "offline: download the torchvision/timm weights file elsewhere and pass its path as pretrained=PATH"
        ) from exc
    load_into_backbone(backbone, name, state, in_chans)
