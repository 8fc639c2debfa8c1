"""Which backbone weights a fine-tuning run may change: all ("none"), none ("linear-probe": only the head
learns), or all but the early stages ("partial": the first half of the backbone's convolutions stay frozen).

Frozen BatchNorm layers also keep their running statistics (they stay in eval mode while the rest trains): with a
few hundred films, re-estimating them would move the features the frozen weights expect.
"""
from __future__ import annotations

from torch import nn


def frozen_parameter_names(backbone: nn.Module, mode: str) -> list[str]:
    """Names (in ``backbone.named_parameters()``) that ``mode`` freezes."""
    names = [n for n, _ in backbone.named_parameters()]
    if mode == "none":
        return []
    if mode == "linear-probe":
        return names
    # partial: everything before the convolution that starts the second half (parameters come in forward order)
    convs = [i for i, (_, p) in enumerate(backbone.named_parameters()) if p.ndim == 4]
    cut = convs[len(convs) // 2] if convs else 0
    return names[:cut]


def apply_freeze(model: nn.Module, mode: str) -> list[nn.Module]:
    """Set ``requires_grad=False`` on the frozen backbone parameters of a CXRModel; returns the BatchNorm modules
    wholly inside the frozen part, which :func:`keep_frozen_eval` holds in eval mode."""
    frozen = set(frozen_parameter_names(model.backbone, mode))
    for name, p in model.backbone.named_parameters():
        if name in frozen:
            p.requires_grad_(False)
    bns = []
    for name, m in model.backbone.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            own = [f"{name}.{k}" if name else k for k, _ in m.named_parameters(recurse=False)]
            if own and all(k in frozen for k in own):
                bns.append(m)
    return bns


def keep_frozen_eval(bns: list[nn.Module]) -> None:
    """After ``model.train()``: frozen BatchNorms back to eval, so their running statistics do not move."""
    for m in bns:
        m.eval()
