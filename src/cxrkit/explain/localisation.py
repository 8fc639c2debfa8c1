"""Weakly-supervised localisation scores: heatmap boxes against radiologists' boxes (ChestX-ray8 protocol).

Wang et al. (CVPR 2017) threshold each finding's heatmap on images known to carry the finding, take the boxes of
the hot regions, and call a ground-truth box found at T when a detected box for that finding reaches
IoBB >= T (intersection over the detected box's area) or IoU >= T. Accuracy = found boxes / all boxes.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from cxrkit.explain.boxes import ExplainError, boxes_from_heatmap, iobb, iou

T_DEFAULT: tuple[float, ...] = (0.1, 0.25, 0.5, 0.75, 0.9)
ALL = "all"  # the pooled row of evaluate_localisation's result


def best_overlaps(truth: Sequence[float], detected: Sequence[Sequence[float]]) -> tuple[float, float]:
    """(best IoU, best IoBB) of one ground-truth box against any of the detected boxes (0, 0 when none)."""
    if not detected:
        return 0.0, 0.0
    return max(iou(truth, d) for d in detected), max(iobb(truth, d) for d in detected)


def summarise(best_iou: np.ndarray, best_iobb: np.ndarray, thresholds: Sequence[float] = T_DEFAULT) -> dict:
    """Accuracies at each T from the per-box best overlaps (one entry per ground-truth box)."""
    best_iou, best_iobb = np.asarray(best_iou, float), np.asarray(best_iobb, float)
    n = len(best_iou)
    out: dict = {"n_boxes": int(n)}
    for t in thresholds:
        out[f"acc_iobb@{t:g}"] = float((best_iobb >= t).mean()) if n else float("nan")
    for t in thresholds:
        out[f"acc_iou@{t:g}"] = float((best_iou >= t).mean()) if n else float("nan")
    out["mean_best_iou"] = float(best_iou.mean()) if n else float("nan")
    out["mean_best_iobb"] = float(best_iobb.mean()) if n else float("nan")
    return out


def evaluate_localisation(predictor, cache, rows: Sequence[int] | np.ndarray | None = None, method: str = "auto",
                          thresholds: Sequence[float] = T_DEFAULT, *, box_threshold: float | str = 0.5,
                          min_area: int = 16, batch_size: int = 16, progress: bool = True) -> dict:
    """Localisation accuracy of a predictor's heatmaps on a cache's ground-truth boxes.

    ``cache``: a :class:`cxrkit.data.Cache` (``images``, ``boxes`` with columns row, image_id, label, x, y, w, h in
    cache pixels). ``rows``: restrict to these cache rows (e.g. ``cache.rows("test")``); None = every boxed image.
    Each (image, finding) pair with boxes gets one heatmap for that finding; its boxes come from
    :func:`boxes_from_heatmap` (``box_threshold``, ``min_area``, in cache pixels).

    Returns ``{finding: {"n_boxes", "n_images", "acc_iobb@T"..., "acc_iou@T"..., "mean_best_iou",
    "mean_best_iobb"}}`` for every finding with boxes, plus ``"all"`` pooling every box. Boxes whose label the
    model does not predict are left out (``"skipped_labels"`` in ``"all"`` lists them).
    """
    import pandas as pd
    from tqdm.auto import tqdm

    from cxrkit.explain.cam import explain_batch

    if not thresholds or any(not 0 < float(t) <= 1 for t in thresholds):
        raise ExplainError(f"thresholds must be values in (0, 1], got {list(thresholds)}")
    boxes = getattr(cache, "boxes", None)
    if boxes is None or not {"row", "label", "x", "y", "w", "h"} <= set(boxes.columns):
        raise ExplainError("the cache has no boxes table with columns row, label, x, y, w, h; prepare it from a "
                           "dataset with bounding boxes (NIH with BBox_List_2017.csv, or the phantom set)")
    if rows is not None:
        boxes = boxes[boxes["row"].isin(np.asarray(rows, dtype=np.int64))]
    names = list(predictor.label_names)
    skipped = sorted(set(boxes["label"]) - set(names))
    boxes = boxes[boxes["label"].isin(names)]
    pairs = boxes[["row", "label"]].drop_duplicates().sort_values(["row", "label"]).to_numpy()
    grouped = {k: g[["x", "y", "w", "h"]].to_numpy(float) for k, g in boxes.groupby(["row", "label"])}

    records: list[tuple[str, int, float, float]] = []
    bar = tqdm(total=len(pairs), desc="localisation", unit="map", disable=not progress)
    for s in range(0, len(pairs), batch_size):
        chunk = pairs[s:s + batch_size]
        images = np.asarray(cache.images[chunk[:, 0].astype(np.int64)])
        maps = explain_batch(predictor, images, [names.index(lbl) for lbl in chunk[:, 1]], method, batch_size)
        for (row, label), heat in zip(chunk, maps):
            detected = boxes_from_heatmap(heat, box_threshold, min_area)
            for truth in grouped[(row, label)]:
                b_iou, b_iobb = best_overlaps(truth, detected)
                records.append((label, int(row), b_iou, b_iobb))
        bar.update(len(chunk))
    bar.close()

    table = pd.DataFrame(records, columns=["label", "row", "iou", "iobb"])
    result: dict = {}
    for label in [n for n in names if n in set(table["label"])]:
        part = table[table["label"] == label]
        result[label] = {**summarise(part["iou"], part["iobb"], thresholds), "n_images": int(part["row"].nunique())}
    result[ALL] = {**summarise(table["iou"], table["iobb"], thresholds), "n_images": int(table["row"].nunique()),
                   "skipped_labels": skipped}
    return result
