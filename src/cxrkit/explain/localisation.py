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


def boxed_pairs(predictor, cache, rows=None):
    """The (row, label) pairs with ground-truth boxes that ``predictor`` predicts (sorted), their boxes
    ``{(row, label): n x 4}``, and the labels it does not predict."""
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
    return pairs, grouped, skipped


def pair_maps(predictor, cache, pairs, method: str = "auto", batch_size: int = 16, progress: bool = True,
              desc: str = "maps") -> np.ndarray:
    """One ``method`` map per (row, label) pair, K x S x S in the cache's geometry."""
    from tqdm.auto import tqdm

    from cxrkit.explain.cam import explain_batch

    names = list(predictor.label_names)
    size = np.asarray(cache.images[:1]).shape[-2:]
    out = np.empty((len(pairs), *size), dtype=np.float32)
    with tqdm(total=len(pairs), desc=desc, unit="map", disable=not progress) as bar:
        for s in range(0, len(pairs), batch_size):
            chunk = pairs[s:s + batch_size]
            images = np.asarray(cache.images[chunk[:, 0].astype(np.int64)])
            out[s:s + len(chunk)] = explain_batch(predictor, images, [names.index(lbl) for lbl in chunk[:, 1]],
                                                  method, batch_size)
            bar.update(len(chunk))
    return out


def score_pairs(names, pairs, grouped, detected, thresholds: Sequence[float] = T_DEFAULT, skipped=()) -> dict:
    """The localisation result (see :func:`evaluate_localisation`) from each pair's detected boxes."""
    import pandas as pd

    records = [(label, int(row), *best_overlaps(truth, found))
               for (row, label), found in zip(pairs, detected) for truth in grouped[(row, label)]]
    table = pd.DataFrame(records, columns=["label", "row", "iou", "iobb"])
    result: dict = {}
    for label in [n for n in names if n in set(table["label"])]:
        part = table[table["label"] == label]
        result[label] = {**summarise(part["iou"], part["iobb"], thresholds), "n_images": int(part["row"].nunique())}
    result[ALL] = {**summarise(table["iou"], table["iobb"], thresholds), "n_images": int(table["row"].nunique()),
                   "skipped_labels": list(skipped)}
    return result


def evaluate_localisation(predictor, cache, rows: Sequence[int] | np.ndarray | None = None, method: str = "auto",
                          thresholds: Sequence[float] = T_DEFAULT, *, box_threshold: float | str | None = None,
                          min_area: int = 16, box_params=None, batch_size: int = 16, progress: bool = True,
                          maps: np.ndarray | None = None) -> dict:
    """Localisation accuracy of a predictor's heatmaps on a cache's ground-truth boxes.

    ``cache``: a :class:`cxrkit.data.Cache` (``images``, ``boxes`` with columns row, image_id, label, x, y, w, h in
    cache pixels). ``rows``: restrict to these cache rows (e.g. ``cache.rows("test")``); None = every boxed image.
    Each (image, finding) pair with boxes gets one heatmap for that finding. Its boxes: by default
    :func:`cxrkit.explain.boxes_for`, i.e. the bundle's tuned parameters for that finding and method, else the
    defaults; ``box_params``: one :class:`BoxParams` (or ``{finding: BoxParams}``) for every finding instead;
    ``box_threshold`` (a number or "otsu") with ``min_area`` (cache pixels): the fixed rule of the ChestX-ray8
    paper, every hot region at or above that fraction of the peak. ``maps``: the pairs' maps when already made.

    Returns ``{finding: {"n_boxes", "n_images", "acc_iobb@T"..., "acc_iou@T"..., "mean_best_iou",
    "mean_best_iobb"}}`` for every finding with boxes, plus ``"all"`` pooling every box. Boxes whose label the
    model does not predict are left out (``"skipped_labels"`` in ``"all"`` lists them).
    """
    from cxrkit.explain.cam import concrete_method
    from cxrkit.explain.finding_boxes import BoxParams, box_params as stored_params, boxes_with

    if not thresholds or any(not 0 < float(t) <= 1 for t in thresholds):
        raise ExplainError(f"thresholds must be values in (0, 1], got {list(thresholds)}")
    pairs, grouped, skipped = boxed_pairs(predictor, cache, rows)
    if maps is None:
        maps = pair_maps(predictor, cache, pairs, method, batch_size, progress, desc="localisation")
    concrete = concrete_method(predictor, method)

    def detect(label, heat):
        if box_threshold is not None:
            return boxes_from_heatmap(heat, box_threshold, min_area)
        if box_params is None:
            return boxes_with(heat, stored_params(predictor, label, concrete)[0])
        return boxes_with(heat, box_params if isinstance(box_params, BoxParams) else box_params[label])

    detected = [detect(label, heat) for (_, label), heat in zip(pairs, maps)]
    return score_pairs(list(predictor.label_names), pairs, grouped, detected, thresholds, skipped)
