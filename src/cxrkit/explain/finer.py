"""Finer evidence maps: LayerCAM on an earlier, higher-resolution stage, and its fusion with CAM.

CAM lives on the last feature map (stride 32: 7 x 7 at 224 px, 5 x 5 at the CPU demo's 160 px), so one cell covers
32 px and a 10-px nodule cannot be outlined. LayerCAM (Jiang et al., IEEE TIP 2021) weights every location of an
earlier layer's activations by its own positive gradient, ``ReLU(sum_k ReLU(dy_c/dA_k) * A_k)``, so it works on the
stage one down (stride 16: DenseNet-121's third dense block after its transition's BN + ReLU, 14 x 14 at 224 px).
Its maps are finer but less class-specific; ``cam-layercam`` multiplies the two (CAM says which region, LayerCAM
where inside it), which keeps CAM's class evidence and LayerCAM's resolution.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from cxrkit.explain.boxes import ExplainError

FINER_FACTOR = 2  # the stage whose maps are this many times finer than the final feature map (stride 32 -> 16)
_LAYER_ATTR = "_cxrkit_finer_layers"  # the layers found for a model instance, kept on it (each costs a forward)


def find_finer_layer(model: nn.Module, example: torch.Tensor, factor: int | None = None) -> nn.Module:
    """The layer LayerCAM reads: the last module, in execution order, whose output is ``factor`` times finer than
    the final feature map, preferring an activation (ReLU-like) module so the activations are non-negative, as
    LayerCAM assumes. Found once per model instance (one forward on ``example``) and remembered on the model."""
    factor = int(factor or FINER_FACTOR)
    cached = model.__dict__.setdefault(_LAYER_ATTR, {})  # factor -> layer; not setattr: nn.Module would register it
    if factor in cached:
        return cached[factor]
    seen: list[tuple[nn.Module, tuple[int, int]]] = []

    def record(mod, _inputs, out):
        if torch.is_tensor(out) and out.ndim == 4:
            seen.append((mod, tuple(out.shape[-2:])))

    hooks = [m.register_forward_hook(record) for m in model.modules() if m is not model]
    try:
        with torch.no_grad():
            feats = model.forward_all(example[:1])["features"] if hasattr(model, "forward_all") else model(example[:1])
    finally:
        for h in hooks:
            h.remove()
    if not torch.is_tensor(feats) or feats.ndim != 4:
        raise ExplainError(f"{type(model).__name__} has no 4-D feature map; LayerCAM needs a convolutional model")
    target = (feats.shape[-2] * factor, feats.shape[-1] * factor)
    at = [m for m, hw in seen if hw == target]
    if not at:
        raise ExplainError(f"{type(model).__name__} has no layer at {target[0]} x {target[1]} ({factor} x finer than "
                           f"its {feats.shape[-2]} x {feats.shape[-1]} feature map); use method 'cam' or 'gradcam'")
    acts = [m for m in at if isinstance(m, (nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.LeakyReLU))]
    layer = (acts or at)[-1]
    cached[factor] = layer
    return layer


def layercam_maps(model: nn.Module, x: torch.Tensor, classes: list[int], factor: int | None = None) -> np.ndarray:
    """LayerCAM maps, B x H x W float32 in [0, 1] at the model input's size, one class per row (via
    ``pytorch_grad_cam.LayerCAM``: ReLU'd, min-max normalised per map)."""
    try:
        from pytorch_grad_cam import LayerCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    except ImportError as exc:
        raise ExplainError("LayerCAM needs the grad-cam package: pip install 'cxrkit[explain]' (or use method='cam', "
                           "which needs nothing extra)") from exc
    from cxrkit.explain.gradcam import run_cam

    return run_cam(LayerCAM, model, find_finer_layer(model, x, factor), x, classes, ClassifierOutputTarget)


def fuse(coarse: np.ndarray, fine: np.ndarray) -> np.ndarray:
    """``cam-layercam``: the product of two [0, 1] maps of the same shape (K x H x W), each renormalised to peak 1.
    Where the coarse map is zero (no class evidence) the fused map is zero, however hot the fine one."""
    prod = np.asarray(coarse, np.float32) * np.asarray(fine, np.float32)
    peak = prod.reshape(len(prod), -1).max(axis=1).clip(min=1e-12)[:, None, None]
    return np.clip(prod / peak, 0.0, 1.0).astype(np.float32)
