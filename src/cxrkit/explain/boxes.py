"""Boxes from heatmaps, box overlap measures, and the square-fit geometry heatmaps and boxes travel through.

A box is ``(x, y, w, h)`` in pixels (top-left corner, width, height), as in NIH's BBox_List_2017 and the cache's
boxes table; boxes found in a heatmap carry a fifth entry, their score (the heatmap's peak inside the box).
"""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from cxrkit.data.errors import CxrError
from cxrkit.data.transforms import SquareFit

Box = tuple[float, float, float, float]
ScoredBox = tuple[int, int, int, int, float]


class ExplainError(CxrError):
    """A heatmap, box or explanation request was malformed (says what was wrong and what to pass instead)."""


# -- overlap measures ----------------------------------------------------------------------------------
def _intersection(a: Sequence[float], b: Sequence[float]) -> float:
    ix = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    iy = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    return max(0.0, ix) * max(0.0, iy)


def _area(a: Sequence[float]) -> float:
    return max(0.0, float(a[2])) * max(0.0, float(a[3]))


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two ``(x, y, w, h)`` boxes (extra entries, e.g. a score, are ignored).

    0 when the union is empty (two degenerate boxes), so the result is always in [0, 1].
    """
    inter = _intersection(a, b)
    union = _area(a) + _area(b) - inter
    return float(min(1.0, inter / union)) if union > 0 else 0.0


def iobb(truth: Sequence[float], detected: Sequence[float]) -> float:
    """Intersection over the *detected* box's area (ChestX-ray8's IoBB, Wang et al. 2017).

    Rewards a detected box that lies inside the ground truth however small it is, so IoBB >= IoU always;
    0 for a degenerate detected box.
    """
    area = _area(detected)
    return float(min(1.0, _intersection(truth, detected) / area)) if area > 0 else 0.0


# -- boxes from a heatmap --------------------------------------------------------------------------------
def _check_heatmap(heatmap: np.ndarray) -> np.ndarray:
    heatmap = np.asarray(heatmap, dtype=np.float32)
    if heatmap.ndim != 2 or heatmap.size == 0:
        raise ExplainError(f"a heatmap must be a non-empty 2-D array, got shape {heatmap.shape}")
    if not np.isfinite(heatmap).all():
        raise ExplainError("heatmap holds NaN or infinite values; explain the image again")
    return heatmap


def heatmap_mask(heatmap: np.ndarray, threshold: float | str = 0.5) -> np.ndarray:
    """Boolean mask of the 'hot' region: ``heatmap >= threshold * max`` or, with ``"otsu"``, Otsu's threshold."""
    heatmap = _check_heatmap(heatmap)
    peak = float(heatmap.max())
    if peak <= 0:
        return np.zeros(heatmap.shape, dtype=bool)
    if isinstance(threshold, str):
        if threshold != "otsu":
            raise ExplainError(f"threshold must be a number in (0, 1] (relative to the map's maximum) or 'otsu', "
                               f"got {threshold!r}")
        scaled = np.clip(heatmap / peak * 255.0, 0, 255).astype(np.uint8)
        level, _ = cv2.threshold(scaled, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        return scaled > level  # cv2's own convention: strictly above Otsu's level
    if not 0 < float(threshold) <= 1:
        raise ExplainError(f"threshold must be in (0, 1] (a fraction of the map's maximum), got {threshold}")
    return heatmap >= float(threshold) * peak


def boxes_from_heatmap(heatmap: np.ndarray, threshold: float | str = 0.5, min_area: int = 16) -> list[ScoredBox]:
    """Bounding boxes of the connected hot regions of a heatmap, best first.

    ``threshold``: a fraction of the map's maximum (0.5: pixels at least half as hot as the peak) or ``"otsu"``.
    ``min_area``: components with fewer pixels are dropped (specks). Each box is ``(x, y, w, h, score)`` with
    score = the heatmap's maximum inside the component (8-connected, via ``cv2.connectedComponentsWithStats``).
    """
    heatmap = _check_heatmap(heatmap)
    mask = heatmap_mask(heatmap, threshold)
    if not mask.any():
        return []
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if n <= 1:
        return []
    kept = [k for k in range(1, n) if stats[k, cv2.CC_STAT_AREA] >= min_area]
    if len(kept) <= 32:  # a smooth map's few regions: each peak inside its own box (~0.01 ms each)
        peaks = {k: _component_peak(heatmap, labels, stats[k], k) for k in kept}
    else:  # a speckled map: one pass for every component (np.maximum.at costs ~0.4 ms on 256 x 256)
        every = np.full(n, -np.inf, dtype=np.float64)
        np.maximum.at(every, labels[mask], heatmap[mask].astype(np.float64))
        peaks = {k: float(every[k]) for k in kept}
    out: list[ScoredBox] = [(*(int(v) for v in stats[k, :4]), peaks[k]) for k in kept]
    out.sort(key=lambda b: -b[4])
    return out


def _component_peak(heatmap: np.ndarray, labels: np.ndarray, stat: np.ndarray, k: int) -> float:
    x, y, w, h = (int(v) for v in stat[:4])
    inside = labels[y:y + h, x:x + w] == k
    return float(heatmap[y:y + h, x:x + w][inside].max())


# -- square-fit geometry ---------------------------------------------------------------------------------
def square_fit_geometry(height: int, width: int, size: int) -> SquareFit:
    """The :class:`SquareFit` that :func:`cxrkit.data.transforms.fit_square` uses for an H x W image, without
    resizing any pixels (kept identical to fit_square's arithmetic; a test checks it)."""
    scale = size / max(height, width)
    nh, nw = max(1, round(height * scale)), max(1, round(width * scale))
    if nh == nw == size:
        return SquareFit(scale, 0.0, 0.0)
    return SquareFit(scale, float((size - nw) // 2), float((size - nh) // 2))


def unfit_map(square_map: np.ndarray, fit: SquareFit, height: int, width: int) -> np.ndarray:
    """Map a size x size map (in fit_square's frame) back onto the original H x W image: crop the padding,
    undo the scale. Values stay in the map's range."""
    nh, nw = max(1, round(height * fit.scale)), max(1, round(width * fit.scale))
    px, py = int(fit.pad_x), int(fit.pad_y)
    crop = square_map[py:py + nh, px:px + nw]
    if crop.shape == (height, width):
        return np.ascontiguousarray(crop, dtype=np.float32)
    interp = cv2.INTER_AREA if (height < nh and width < nw) else cv2.INTER_LINEAR
    return cv2.resize(np.ascontiguousarray(crop, dtype=np.float32), (width, height), interpolation=interp)


def unfit_box(box: Sequence[float], fit: SquareFit) -> tuple[float, ...]:
    """A box in the square frame -> the original image's pixels (the inverse of :meth:`SquareFit.box`);
    a trailing score is kept."""
    x, y, w, h = box[:4]
    return ((x - fit.pad_x) / fit.scale, (y - fit.pad_y) / fit.scale, w / fit.scale, h / fit.scale, *box[4:])
