"""Heatmaps for a bundle's findings: exact CAM, attention maps, and the dispatch to Grad-CAM / Grad-CAM++.

Every map is float32 in [0, 1] (divided by its own maximum, or min-max normalised for Grad-CAM), at the size of the
image it explains. Images go through the predictor's own geometry (``fit_square`` to ``preresize``, then
``to_model_input``), so a map shows what the model saw; the padding is cropped off again on the way back.
"""
from __future__ import annotations

import logging
from typing import Sequence

import cv2
import numpy as np
import torch

from cxrkit.explain.boxes import ExplainError, square_fit_geometry, unfit_map
from cxrkit.models.heads import CAM_HEADS, PATCH_LOGIT_HEADS

log = logging.getLogger(__name__)
METHODS = ("auto", "cam", "gradcam", "gradcam++", "attention", "layercam", "layercam-x4", "layercam-x8",
           "cam-layercam", "per-finding")
LAYERCAM_FACTOR = {"layercam": 2, "layercam-x4": 4, "layercam-x8": 8}  # how many times finer than the feature map
GRADIENT_METHODS = ("gradcam", "gradcam++", *LAYERCAM_FACTOR)  # one backward per (image, finding) pair


def _models(predictor) -> list:
    """The single predictor, or an ensemble's member predictors (their maps are averaged)."""
    members = getattr(predictor, "members", None)
    if members:
        return list(members)
    if not hasattr(predictor, "model"):
        raise ExplainError(f"{type(predictor).__name__} has no model to explain; pass a cxrkit.bundle.Predictor")
    return [predictor]


def resolve_method(model: torch.nn.Module, method: str = "auto") -> str:
    """The concrete method for ``model``: "auto" is CAM for a linear head (exact), the head's own maps for an
    attention head, Grad-CAM for anything else. "layercam" / "layercam-x4" / "layercam-x8" work on any convolutional
    model with a stage that much finer; "cam-layercam" needs what "cam" needs; "per-finding" (each finding's stored
    method) is resolved per finding."""
    if method not in METHODS:
        raise ExplainError(f"unknown explanation method {method!r}; choose one of {METHODS}")
    head = getattr(model, "head_type", None)
    if method == "auto":
        return "attention" if head == "attention" else "cam" if head in PATCH_LOGIT_HEADS else "gradcam"
    if method == "attention" and head != "attention":
        raise ExplainError(f"method 'attention' needs an attention-head model, this one has head {head!r}; use "
                           "'cam', 'gradcam' or 'auto'")
    if method in ("cam", "cam-layercam") and head not in CAM_HEADS:
        raise ExplainError(f"method {method!r} needs a cxrkit linear, LSE or attention head on a feature map; use "
                           "'gradcam' or 'layercam'")
    return method


def class_maps(model: torch.nn.Module, x: torch.Tensor, method: str) -> torch.Tensor:
    """Feature-resolution maps of every class (B x C x h x w, >= 0, unnormalised), ``method`` "cam" or "attention".

    CAM (Zhou et al. 2016) for global-average-pooling + linear: M_c = ReLU(sum_k w_ck f_k), the map whose mean is the
    logit minus its bias (for the LSE head the same patch logits, LSE-pooled into the logit). For the attention
    head the same decomposition gives each location's contribution to the logit, a_c(s) * (w_c . f(s));
    "attention" returns a_c itself.
    """
    return maps_from_outputs(model, model.forward_all(x), method)


def maps_from_outputs(model: torch.nn.Module, out: dict, method: str = "cam") -> torch.Tensor:
    """:func:`class_maps` from the outputs of a ``forward_all`` already run (the exported graph computes them in
    the same pass as the logits, so a fast runtime gives CAM without a second, torch, forward)."""
    if method == "attention":
        return out["attention"].float()
    feats = out["features"].float()
    if model.head_type in PATCH_LOGIT_HEADS:
        return torch.relu(torch.einsum("cf,bfhw->bchw", model.head.fc.weight.float(), feats))
    contrib = torch.einsum("cf,bfhw->bchw", model.head.weight.float(), feats) * out["attention"].float()
    return torch.relu(contrib)


def maps_from_graph(predictor, cam: np.ndarray, classes: Sequence[int], height: int, width: int) -> np.ndarray:
    """CAM maps at an image's original size (K x H x W, [0, 1]) from the ``cam`` output (C x h x w) of an exported
    graph for that image: the same normalisation, resize and un-padding as :func:`explain_images`."""
    square = _to_square(np.asarray(cam, dtype=np.float32)[list(classes)], predictor.preresize)
    fit = square_fit_geometry(height, width, predictor.preresize)
    return np.stack([unfit_map(m, fit, height, width).clip(0.0, 1.0) for m in square]) if len(square) else \
        np.zeros((0, height, width), np.float32)


def _normalise(maps: torch.Tensor) -> torch.Tensor:
    peak = maps.flatten(1).amax(dim=1).clamp_min(1e-12).view(-1, 1, 1)
    return (maps / peak).clamp_(0.0, 1.0)


def _to_square(maps: np.ndarray | torch.Tensor, size: int) -> np.ndarray:
    """K x h x w maps (feature map or model input resolution) -> K x size x size in [0, 1]. Either map spans the
    whole preresize square, so a plain (half-pixel) bilinear resize aligns it. OpenCV, not torch: this runs per
    film on a prediction service's model thread, where torch's intra-op threads wait on each other behind the
    runtime's and the decoders' (measured on a loaded 2-core machine: 7 ms a map with 2 torch threads, 0.07 ms
    with OpenCV; the maps agree within float rounding)."""
    if isinstance(maps, torch.Tensor):
        maps = maps.detach().float().cpu().numpy()
    maps = np.asarray(maps, dtype=np.float32)
    if not len(maps):
        return np.zeros((0, size, size), np.float32)
    # cv2 resizes an h x w x K array in one call for K <= 128 channels (OpenCV 5; 512 in OpenCV 4)
    square = np.concatenate([
        cv2.resize(np.ascontiguousarray(chunk.transpose(1, 2, 0)), (size, size),
                   interpolation=cv2.INTER_LINEAR).reshape(size, size, len(chunk)).transpose(2, 0, 1)
        for chunk in (maps[k:k + 128] for k in range(0, len(maps), 128))])
    peak = np.maximum(square.reshape(len(maps), -1).max(axis=1), np.float32(1e-12)).reshape(-1, 1, 1)
    return np.clip(square / peak, 0.0, 1.0).astype(np.float32)


def _member_maps(member, square_u8: np.ndarray, image_idx: np.ndarray, classes: np.ndarray, method: str,
                 batch_size: int) -> np.ndarray:
    """One map per (image_idx[k], classes[k]) pair from a single predictor; images are square_u8 (n x P x P)."""
    model = member.model
    concrete = resolve_method(model, method)
    size = square_u8.shape[-1]
    out = np.empty((len(classes), size, size), dtype=np.float32)
    if concrete in GRADIENT_METHODS:
        from cxrkit.explain.finer import layercam_maps
        from cxrkit.explain.gradcam import gradcam_maps

        for s in range(0, len(classes), batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(square_u8[image_idx[s:s + batch_size]])).unsqueeze(1)
            x, cls = member.model_input(batch).float(), classes[s:s + batch_size].tolist()
            maps = layercam_maps(model, x, cls, LAYERCAM_FACTOR[concrete]) if concrete in LAYERCAM_FACTOR else \
                gradcam_maps(model, x, cls, plus_plus=concrete == "gradcam++")
            out[s:s + batch_size] = _to_square(maps, size)
        return out
    if concrete == "cam-layercam":
        from cxrkit.explain.finer import fuse

        coarse = _member_maps(member, square_u8, image_idx, classes, "cam", batch_size)
        return fuse(coarse, _member_maps(member, square_u8, image_idx, classes, "layercam", batch_size))
    # CAM / attention: one forward per image gives every class's map, however many findings are asked for
    for s in range(0, len(square_u8), batch_size):
        sel = np.flatnonzero((image_idx >= s) & (image_idx < s + batch_size))
        if not len(sel):
            continue
        batch = torch.from_numpy(np.ascontiguousarray(square_u8[s:s + batch_size])).unsqueeze(1)
        with torch.no_grad():
            maps = class_maps(model, member.model_input(batch), concrete)
        pick = maps[torch.as_tensor(image_idx[sel] - s, device=maps.device),
                    torch.as_tensor(classes[sel], device=maps.device)]
        out[sel] = _to_square(pick, size)
    return out


def preferred_method(predictor, method: str = "auto") -> str:
    """``method``, with "auto" meaning the map method ``cxr tune-boxes`` stored in the bundle when it stored one."""
    if method != "auto":
        return method
    from cxrkit.explain.finding_boxes import map_method

    stored = map_method(predictor)
    if _needs_grad_cam(predictor, stored) and not _has_grad_cam():
        # a bundle tuned where cxrkit[explain] was installed still explains (with its head's default) without it
        log.warning("the bundle's map method %r needs the grad-cam package (pip install 'cxrkit[explain]'); using "
                    "the head's default map instead", stored)
        return "auto"
    return stored


def _needs_grad_cam(predictor, method: str) -> bool:
    from cxrkit.explain.finding_boxes import PER_FINDING, finding_method

    if method == PER_FINDING:
        return any(_needs_grad_cam(predictor, finding_method(predictor, n)) for n in predictor.label_names)
    return method in GRADIENT_METHODS or method == "cam-layercam"


def _has_grad_cam() -> bool:
    import importlib.util

    return importlib.util.find_spec("pytorch_grad_cam") is not None


def _explain_pairs(predictor, square_u8: np.ndarray, image_idx, classes, method: str,
                   batch_size: int) -> np.ndarray:
    """Maps (K x P x P) for (image, class) pairs of images already at the preresize size. An ensemble's maps are its
    members' maps averaged with the ensemble's weights (each member explained with its own method under "auto")
    and renormalised."""
    image_idx, classes = np.asarray(image_idx, dtype=np.int64), np.asarray(classes, dtype=np.int64)
    method = preferred_method(predictor, method)
    if batch_size < 1:
        raise ExplainError(f"batch_size must be >= 1, got {batch_size}")
    from cxrkit.explain.finding_boxes import PER_FINDING, finding_method

    if method == PER_FINDING:  # each finding's pairs with that finding's own method
        per_class = np.asarray([finding_method(predictor, predictor.label_names[c]) for c in classes], dtype=object)
        out = np.empty((len(classes), *square_u8.shape[1:]), dtype=np.float32)
        for m in dict.fromkeys(per_class):
            sel = np.flatnonzero(per_class == m)
            out[sel] = _explain_pairs(predictor, square_u8, image_idx[sel], classes[sel], m, batch_size)
        return out
    members = _models(predictor)
    if len(members) == 1:
        return _member_maps(members[0], square_u8, image_idx, classes, method, batch_size)
    weights = getattr(predictor, "weights", None)
    weights = np.ones(len(members)) if weights is None else np.asarray(weights, dtype=np.float64)
    total = np.zeros((len(classes), *square_u8.shape[1:]), dtype=np.float32)
    for member, weight in zip(members, weights):
        total += np.float32(weight) * _member_maps(member, square_u8, image_idx, classes, method, batch_size)
    return _normalise(torch.from_numpy(total)).numpy()


def _check_classes(predictor, classes: Sequence[int], n: int) -> list[int]:
    classes = [int(c) for c in np.asarray(classes).reshape(-1)]
    if len(classes) != n:
        raise ExplainError(f"class_indices has {len(classes)} entries for {n} images; give one finding index per image")
    c = len(predictor.label_names)
    bad = [k for k in classes if not 0 <= k < c]
    if bad:
        raise ExplainError(f"finding indices {bad[:5]} are out of range for a model with {c} findings "
                           f"({', '.join(predictor.label_names)})")
    return classes


def explain_batch(predictor, images_u8: np.ndarray, class_indices: Sequence[int], method: str = "auto",
                  batch_size: int = 16) -> np.ndarray:
    """Heatmaps for N same-sized uint8 grey images (N x H x W, e.g. cache images), one finding index per image.

    Returns N x H x W float32 in [0, 1]. ``method``: "auto" (CAM for linear heads, attention maps for attention
    heads), "cam", "gradcam", "gradcam++" or "attention". Images that are not at the predictor's ``preresize``
    size are brought to it with ``fit_square`` and the maps mapped back.
    """
    images = np.asarray(images_u8)
    if images.dtype != np.uint8 or images.ndim != 3:
        raise ExplainError(f"images_u8 must be an N x H x W uint8 array, got {images.dtype} {images.shape}")
    classes = _check_classes(predictor, class_indices, len(images))
    n, h, w = images.shape
    p = _models(predictor)[0].preresize
    if n == 0:
        return np.zeros((0, h, w), dtype=np.float32)
    if (h, w) == (p, p):
        return _explain_pairs(predictor, images, np.arange(n), classes, method, batch_size)
    square = predictor.to_uint8_batch(images).squeeze(1).numpy()
    maps = _explain_pairs(predictor, square, np.arange(n), classes, method, batch_size)
    fit = square_fit_geometry(h, w, p)
    return np.stack([unfit_map(m, fit, h, w) for m in maps]).clip(0.0, 1.0)


def finding_indices(predictor, findings: Sequence[str] | None) -> list[int]:
    """Indices of finding names (all findings when None); an unknown name is an error listing the known ones."""
    names = list(predictor.label_names)
    if findings is None:
        return list(range(len(names)))
    unknown = [f for f in findings if f not in names]
    if unknown:
        raise ExplainError(f"unknown finding(s) {unknown}; this model knows {', '.join(names)}")
    return [names.index(f) for f in findings]


def explain_images(predictor, images: Sequence[np.ndarray], findings: Sequence[str] | None = None,
                   method: str = "auto", batch_size: int = 16,
                   shapes: Sequence[tuple[int, int] | None] | None = None) -> list[dict[str, np.ndarray]]:
    """Heatmaps covering each whole image: one ``{finding: H x W float32 map}`` dict per image.

    ``images``: uint8 grey arrays of any size (what :func:`cxrkit.data.read_image` returns). ``findings``: names
    to explain (all of the model's findings when None). ``shapes``: per image, the (height, width) of its maps
    (the image's own size when None or absent), e.g. :func:`cxrkit.explain.finding_boxes.box_map_shape` when the
    maps are only for boxes: a 1024-px map is 4 MB per finding and adds nothing to the boxes.
    """
    idx = finding_indices(predictor, findings)
    if shapes is not None and len(shapes) != len(images):
        raise ExplainError(f"shapes has {len(shapes)} entries for {len(images)} images; give one (height, width) "
                           "or None per image")
    if not images or not idx:
        return [{} for _ in images]
    square = predictor.to_uint8_batch(list(images)).squeeze(1).numpy()
    pairs = [(i, c) for i in range(len(images)) for c in idx]
    maps = _explain_pairs(predictor, square, [i for i, _ in pairs], [c for _, c in pairs], method, batch_size)
    p = square.shape[-1]
    out: list[dict[str, np.ndarray]] = [{} for _ in images]
    for (i, c), m in zip(pairs, maps):
        h, w = (shapes[i] if shapes is not None and shapes[i] is not None else np.asarray(images[i]).shape)
        out[i][predictor.label_names[c]] = unfit_map(m, square_fit_geometry(h, w, p), h, w).clip(0.0, 1.0)
    return out


def concrete_method(predictor, method: str = "auto") -> str:
    """The method ``explain_*`` will actually run for this predictor (resolves "auto", to the bundle's tuned map
    method when it has one; errors early). "per-finding" stays as it is: each finding's method comes from the
    bundle (:func:`cxrkit.explain.finding_boxes.finding_method`), and so do its box parameters."""
    from cxrkit.explain.finding_boxes import PER_FINDING, finding_method

    chosen = preferred_method(predictor, method)
    model = _models(predictor)[0].model
    if chosen == PER_FINDING:
        for name in predictor.label_names:
            resolve_method(model, finding_method(predictor, name))
        return chosen
    return resolve_method(model, chosen)
