"""Boxes for one finding from its evidence map, with that finding's box parameters: the one function every output
(``cxr predict``, ``POST /v1/predict``, the web page, the DICOM node's SR, the evaluation report) uses.

Per finding and map method the bundle may store tuned parameters (``cxr tune-boxes``, fitted on the validation
split's ground-truth boxes): ``config["explain"]["boxes"][method][finding] = {"threshold", "min_area_frac",
"max_boxes"}``. Without them the documented defaults apply (:data:`DEFAULT_PARAMS`). Boxes are found on the map
brought to at most :data:`BOX_SIDE` px (connected components on a 1024-px map cost ~30 ms a finding; the maps are
upsampled from a 5-28-cell grid, so nothing finer is lost) and returned in the map's own pixels, or in the film's
when the map was made smaller than the film (``film_shape``; see :func:`box_map_shape`).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping

import cv2
import numpy as np

from cxrkit.explain.boxes import ExplainError, boxes_from_heatmap

BOX_SIDE = 256
PER_FINDING = "per-finding"  # the map method that takes each finding's method from the bundle


@dataclass(frozen=True)
class BoxParams:
    """``threshold``: pixels at or above this fraction of the map's peak are hot; ``min_area_frac``: hot regions
    smaller than this fraction of the map's area are dropped; ``max_boxes``: the hottest regions kept."""

    threshold: float = 0.5
    min_area_frac: float = 0.001
    max_boxes: int = 3

    def __post_init__(self):
        if not 0 < float(self.threshold) <= 1:
            raise ExplainError(f"box threshold must be in (0, 1] (a fraction of the map's peak), got {self.threshold}")
        if not 0 <= float(self.min_area_frac) < 1:
            raise ExplainError(f"min_area_frac must be in [0, 1), got {self.min_area_frac}")
        if int(self.max_boxes) < 1:
            raise ExplainError(f"max_boxes must be >= 1, got {self.max_boxes}")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


DEFAULT_PARAMS = BoxParams()


def _explain_config(source) -> dict:
    config = source if isinstance(source, Mapping) else getattr(source, "config", None) or {}
    return config.get("explain") or {}


def box_params(source, finding: str, method: str) -> tuple[BoxParams, bool]:
    """(parameters, tuned?) for ``finding``'s maps made with ``method``; ``source`` a predictor or a bundle config.
    Untuned: the defaults, with the threshold of an older bundle's ``explain.box_threshold`` when it has one."""
    cfg = _explain_config(source)
    if method == PER_FINDING:  # the finding's own map method, whose parameters were tuned with it
        method = finding_method(source, finding)
    stored = ((cfg.get("boxes") or {}).get(method) or {}).get(finding)
    if stored:
        return BoxParams(float(stored["threshold"]), float(stored["min_area_frac"]), int(stored["max_boxes"])), True
    if cfg.get("box_threshold") is not None:
        return BoxParams(threshold=float(cfg["box_threshold"])), False
    return DEFAULT_PARAMS, False


def finding_method(source, finding: str) -> str:
    """The map method ``per-finding`` uses for ``finding``: the one ``cxr tune-boxes`` found best for it on
    validation (``explain.per_finding.methods``), else the bundle's best single method (``.default``)."""
    stored = _explain_config(source).get("per_finding") or {}
    if not stored.get("default"):
        raise ExplainError("method 'per-finding' needs map methods chosen per finding: run `cxr tune-boxes` (with "
                           "--per-finding) on this bundle, or pick one method (cam, layercam, ...)")
    return str((stored.get("methods") or {}).get(finding) or stored["default"])


def map_method(source) -> str:
    """The map method outputs should use: the one ``cxr tune-boxes`` found best on validation, else "auto"."""
    return str(_explain_config(source).get("method") or "auto")


def graph_cam_serves(source) -> bool:
    """Whether an exported graph's CAM outputs are the bundle's own maps: when its map method is CAM, or untuned
    ("auto", CAM for a linear head). A bundle tuned to another method (LayerCAM at a finer stage, per-finding maps)
    gets its maps from the torch model instead, so predict, serve, the web page and the DICOM node draw the same
    boxes from the same maps (the graph's CAM would be faster and coarser: 0.37 vs 0.85 on the demo model's
    validation boxes)."""
    return map_method(source) in ("cam", "auto")


def box_map_shape(height: int, width: int) -> tuple[int, int]:
    """The (height, width) at which to make an H x W film's maps when they are only for boxes: the film brought to
    at most :data:`BOX_SIDE` px, as :func:`boxes_with` would bring a full-size map, without ever making the
    full-size map (upsampling a 7 x 7 grid to 1024 x 1024 costs ~10 ms a finding and adds nothing)."""
    f = min(1.0, BOX_SIDE / max(height, width))
    return max(1, round(height * f)), max(1, round(width * f))


def boxes_with(heatmap: np.ndarray, params: BoxParams,
               film_shape: tuple[int, int] | None = None) -> list[tuple[float, float, float, float, float]]:
    """Up to ``params.max_boxes`` boxes ``(x, y, w, h, score)``, hottest first, in the heatmap's pixels, or in the
    pixels of a ``film_shape`` (height, width) film when the heatmap covers that whole film at another size."""
    heatmap = np.asarray(heatmap, dtype=np.float32)
    if heatmap.ndim != 2 or heatmap.size == 0:
        raise ExplainError(f"a heatmap must be a non-empty 2-D array, got shape {heatmap.shape}")
    f = min(1.0, BOX_SIDE / max(heatmap.shape))
    small = heatmap if f == 1.0 else cv2.resize(
        heatmap, (max(1, round(heatmap.shape[1] * f)), max(1, round(heatmap.shape[0] * f))),
        interpolation=cv2.INTER_AREA)
    # per-axis factors from the searched map to the output frame (a rounded side makes them differ slightly)
    out_h, out_w = heatmap.shape if film_shape is None else (int(film_shape[0]), int(film_shape[1]))
    if out_h < 1 or out_w < 1:
        raise ExplainError(f"film_shape must be a positive (height, width), got {film_shape}")
    fx, fy = out_w / small.shape[1], out_h / small.shape[0]
    min_area = max(1, int(round(params.min_area_frac * small.size)))
    found = boxes_from_heatmap(small, params.threshold, min_area)[:params.max_boxes]
    return [(round(x * fx, 2), round(y * fy, 2), round(w * fx, 2), round(h * fy, 2), round(s, 4))
            for x, y, w, h, s in found]


def boxes_for(predictor, finding: str, heatmap: np.ndarray, method: str, *,
              film_shape: tuple[int, int] | None = None) -> list[tuple[float, ...]]:
    """Boxes ``(x, y, w, h, score)`` (hottest first; heatmap pixels, or ``film_shape``'s when given: see
    :func:`boxes_with`) for ``finding``'s ``method`` map, with the bundle's tuned parameters for that finding and
    method, else :data:`DEFAULT_PARAMS`."""
    return boxes_with(heatmap, box_params(predictor, finding, method)[0], film_shape)


def box_dicts(boxes) -> list[dict[str, float]]:
    """Boxes as JSON objects ``{"x", "y", "w", "h", "score"}`` (predict's JSONL, the REST API)."""
    return [{"x": b[0], "y": b[1], "w": b[2], "h": b[3], "score": b[4]} for b in boxes]
