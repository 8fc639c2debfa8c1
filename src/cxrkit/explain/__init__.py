"""Explaining predictions: CAM / attention / Grad-CAM heatmaps, boxes from maps, localisation scores, figures.

Public API: :func:`explain_batch`, :func:`explain_images` (also ``explain``, the name docs/architecture.md uses), :func:`overlay`, :func:`boxes_from_heatmap`,
:func:`boxes_for` (a finding's boxes with the bundle's box parameters: what every output uses), :func:`iou`,
:func:`iobb`, :func:`evaluate_localisation`, :func:`tune_boxes`, :func:`gallery`. See docs/explain.md.
"""
from __future__ import annotations

# Eager (OpenCV only): binding `overlay` here keeps the function, not the submodule of the same name, on the package.
from cxrkit.explain.boxes import ExplainError, boxes_from_heatmap, iobb, iou
from cxrkit.explain.finding_boxes import BoxParams, box_params, boxes_for, map_method
from cxrkit.explain.overlay import overlay, png_bytes, render_finding

# Lazy so `cxr --help` (which imports cxrkit.explain.cli) does not import torch.
_LAZY = {
    "explain": "cxrkit.explain.cam:explain_images",
    "METHODS": "cxrkit.explain.cam",
    "explain_batch": "cxrkit.explain.cam",
    "explain_images": "cxrkit.explain.cam",
    "resolve_method": "cxrkit.explain.cam",
    "find_target_layer": "cxrkit.explain.gradcam",
    "evaluate_localisation": "cxrkit.explain.localisation",
    "tune_boxes": "cxrkit.explain.box_tuning",
    "store_tuning": "cxrkit.explain.box_tuning",
    "localisation_table": "cxrkit.explain.box_tuning",
    "gallery": "cxrkit.explain.report",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module, _, attr = _LAZY[name].partition(":")
        return getattr(importlib.import_module(module), attr or name)
    raise AttributeError(name)


__all__ = ["BoxParams", "ExplainError", "box_params", "boxes_for", "boxes_from_heatmap", "iobb", "iou", "map_method",
           "overlay", "png_bytes", "render_finding", *_LAZY]
