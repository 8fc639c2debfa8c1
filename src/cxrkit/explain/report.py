"""The heatmap gallery of the evaluation report: each finding's most confident true and false positives."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from cxrkit.explain.boxes import ExplainError, boxes_from_heatmap


def select_cases(probs: np.ndarray, labels: np.ndarray, thresholds: np.ndarray, k: int) -> list[tuple[int, int, str]]:
    """(position, finding index, "TP"/"FP") of the gallery cases: per finding, the most confident positives
    (prob >= threshold) that are labelled positive (TP) and negative (FP). Half of ``k`` each (TPs get the odd
    one); a kind with too few cases leaves its places to the other. Unknown (NaN) labels never count."""
    probs, labels = np.asarray(probs, float), np.asarray(labels, float)
    if probs.shape != labels.shape or probs.ndim != 2:
        raise ExplainError(f"probs {probs.shape} and labels {labels.shape} must be the same N x C shape")
    out: list[tuple[int, int, str]] = []
    for c in range(probs.shape[1]):
        called = probs[:, c] >= thresholds[c]
        ranked = {kind: [i for i in np.argsort(-probs[:, c], kind="stable") if called[i] and labels[i, c] == v]
                  for kind, v in (("TP", 1.0), ("FP", 0.0))}
        n_tp = min(len(ranked["TP"]), max(k - len(ranked["FP"]), (k + 1) // 2))
        n_fp = min(len(ranked["FP"]), k - n_tp)
        out += [(int(i), c, "TP") for i in ranked["TP"][:n_tp]] + [(int(i), c, "FP") for i in ranked["FP"][:n_fp]]
    return out


def gallery(predictor, cache, rows: Sequence[int] | np.ndarray, probs: np.ndarray, labels: np.ndarray, k: int = 6,
            method: str = "auto", box_threshold: float | str | None = None) -> list[dict]:
    """Heatmap figures for the report: ``[{"finding", "row", "kind" ("TP"/"FP"), "prob", "png_bytes"}]``.

    ``rows``: the cache rows ``probs`` / ``labels`` (N x C, in the predictor's label order) belong to. Cases are
    chosen by :func:`select_cases` with the predictor's thresholds; figures show the heatmap, its boxes (white:
    :func:`cxrkit.explain.boxes_for`, or every region >= ``box_threshold`` x peak when given) and the cache's
    ground-truth boxes for that finding (green) when there are any.
    """
    from cxrkit.explain.cam import concrete_method, explain_batch
    from cxrkit.explain.finding_boxes import boxes_for
    from cxrkit.explain.overlay import png_bytes, render_finding

    rows = np.asarray(rows, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float32)
    if len(rows) != len(probs):
        raise ExplainError(f"rows has {len(rows)} entries but probs has {len(probs)}; pass the rows they belong to")
    names = list(predictor.label_names)
    if probs.ndim != 2 or probs.shape[1] != len(names):
        raise ExplainError(f"probs must be N x {len(names)} (the predictor's findings), got {probs.shape}")
    shown_method = concrete_method(predictor, method)
    cases = select_cases(probs, labels, np.asarray(predictor.thresholds, float), k)
    if not cases:
        return []
    images = np.asarray(cache.images[rows[[i for i, _, _ in cases]]])
    maps = explain_batch(predictor, images, [c for _, c, _ in cases], method)
    truth_table = getattr(cache, "boxes", None)
    out = []
    for (i, c, kind), image, heat in zip(cases, images, maps):
        truth = []
        if truth_table is not None and len(truth_table):
            sel = truth_table[(truth_table["row"] == rows[i]) & (truth_table["label"] == names[c])]
            truth = sel[["x", "y", "w", "h"]].to_numpy(float).tolist()
        found = boxes_for(predictor, names[c], heat, shown_method) if box_threshold is None else \
            boxes_from_heatmap(heat, box_threshold)
        rgb = render_finding(image, heat, found, names[c], float(probs[i, c]),
                             method=shown_method, truth=truth, extra=f"{kind} row {int(rows[i])}")
        out.append({"finding": names[c], "row": int(rows[i]), "kind": kind, "prob": float(probs[i, c]),
                    "png_bytes": png_bytes(rgb)})
    return out
