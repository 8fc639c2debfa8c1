"""Grad-CAM and Grad-CAM++ through the ``pytorch_grad_cam`` package (``pip install cxrkit[explain]``)."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from cxrkit.explain.boxes import ExplainError


def find_target_layer(model: nn.Module, example: torch.Tensor | None = None) -> nn.Module:
    """The layer whose output is the final feature map: a cxrkit model's ``backbone`` (its output is exactly the
    map the head pools), otherwise the last module, in execution order, that returns a 4-D tensor with more than
    one location on ``example``."""
    backbone = getattr(model, "backbone", None)
    if isinstance(backbone, nn.Module):
        return backbone
    if example is None:
        raise ExplainError(f"{type(model).__name__} has no .backbone; pass an example input so the last feature-map "
                           "layer can be found")
    seen: list[tuple[nn.Module, bool]] = []

    def record(mod, _inputs, out):
        if torch.is_tensor(out) and out.ndim == 4:
            seen.append((mod, out.shape[-1] * out.shape[-2] > 1))

    hooks = [m.register_forward_hook(record) for m in model.modules() if m is not model]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in hooks:
            h.remove()
    if not seen:
        raise ExplainError(f"{type(model).__name__} produces no 4-D feature map; Grad-CAM needs a convolutional model")
    # a global pool's B x C x 1 x 1 output is 4-D too, but has nothing left to localise
    spatial = [m for m, has_area in seen if has_area]
    return spatial[-1] if spatial else seen[-1][0]


def gradcam_maps(model: nn.Module, x: torch.Tensor, classes: list[int], plus_plus: bool = False,
                 target_layer: nn.Module | None = None) -> np.ndarray:
    """Grad-CAM (or Grad-CAM++) maps, B x H x W float32 in [0, 1] at the model input's size, one class per row.

    Maps are ReLU'd and min-max normalised per image by ``pytorch_grad_cam`` (its convention).
    """
    try:
        from pytorch_grad_cam import GradCAM, GradCAMPlusPlus
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    except ImportError as exc:
        raise ExplainError("Grad-CAM needs the grad-cam package: pip install 'cxrkit[explain]' (or use "
                           "method='cam' / 'attention', which need nothing extra)") from exc
    layer = target_layer if target_layer is not None else find_target_layer(model, x[:1])
    return run_cam(GradCAMPlusPlus if plus_plus else GradCAM, model, layer, x, classes, ClassifierOutputTarget)


def run_cam(cam_class, model: nn.Module, layer: nn.Module, x: torch.Tensor, classes: list[int],
            target_class) -> np.ndarray:
    """One ``pytorch_grad_cam`` method on ``layer``: B x H x W float32 in [0, 1], its hooks released after."""
    cam = cam_class(model=model, target_layers=[layer])
    try:
        # A leaf input that requires grad keeps the graph alive even when the weights are frozen.
        x = x.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            maps = cam(input_tensor=x, targets=[target_class(int(c)) for c in classes])
    finally:
        cam.activations_and_grads.release()
        model.zero_grad(set_to_none=True)
    return np.clip(np.nan_to_num(np.asarray(maps, dtype=np.float32)), 0.0, 1.0)
