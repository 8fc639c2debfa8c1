"""Per-finding AUROC / AUPRC with patient-clustered CIs, and the mean AUROC with its CI."""
from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np

from cxrkit.evaluation.bootstrap import ClusterBootstrap, percentile_ci
from cxrkit.evaluation.metrics import ranking_metrics, undefined_reason


def _nan_to_none(x: float) -> float | None:
    return None if x is None or not np.isfinite(x) else float(x)


def with_ci(name: str, point: float, reps: np.ndarray | None) -> dict:
    """{name, name_ci_low, name_ci_high} with NaN written as None (valid JSON)."""
    lo, hi = percentile_ci(reps) if reps is not None and len(reps) else (float("nan"), float("nan"))
    return {name: _nan_to_none(point), f"{name}_ci_low": _nan_to_none(lo), f"{name}_ci_high": _nan_to_none(hi)}


def ranking_summary(Y: np.ndarray, S: np.ndarray, label_names: Sequence[str], boot: ClusterBootstrap,
                    idx: np.ndarray | None = None) -> tuple[dict, dict[str, np.ndarray]]:
    """Per-class AUROC/AUPRC with CIs for images ``idx`` (all when None).

    Returns (summary, replicates): summary = {"per_class": {name: {...}}, "mean_auroc", "mean_auroc_ci_low",
    "mean_auroc_ci_high", "mean_auroc_classes"}; replicates = {"auroc": R x C, "auprc": R x C, "mean_auroc": R}
    (kept so callers can form paired differences). Undefined classes get NaN (None in JSON) and a ``reason``.
    """
    idx = np.arange(len(Y)) if idx is None else np.asarray(idx)
    C, R = len(label_names), boot.n_boot
    reps = {"auroc": np.full((R, C), np.nan), "auprc": np.full((R, C), np.nan)}
    per_class, points = {}, np.full(C, np.nan)
    for c, name in enumerate(label_names):
        y = Y[idx, c]
        known = idx[~np.isnan(y)]
        reason = undefined_reason(y)
        entry = {"n_pos": int((Y[known, c] >= 0.5).sum()), "n_neg": int((Y[known, c] < 0.5).sum())}
        if reason is not None and entry["n_pos"] == 0:
            entry.update(with_ci("auroc", np.nan, None), **with_ci("auprc", np.nan, None), reason=reason)
            per_class[name] = entry
            continue
        order = known[np.argsort(-S[known, c], kind="mergesort")]  # sort once; weights are gathered in this order
        point = ranking_metrics(Y[order, c], S[order, c], np.ones((1, order.size), np.float32))
        r = boot.apply(ranking_metrics, Y[:, c], S[:, c], idx=order) if R else {"auroc": None, "auprc": None}
        if r["auroc"] is not None:
            reps["auroc"][:, c], reps["auprc"][:, c] = r["auroc"], r["auprc"]
        points[c] = point["auroc"][0]
        entry.update(with_ci("auroc", point["auroc"][0], r["auroc"]), **with_ci("auprc", point["auprc"][0], r["auprc"]))
        if reason is not None:
            entry["reason"] = reason
        per_class[name] = entry
    valid = ~np.isnan(points)
    with warnings.catch_warnings():  # an all-NaN replicate is expected and stays NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        mean_reps = np.nanmean(reps["auroc"][:, valid], axis=1) if valid.any() else np.full(R, np.nan)
    mean_point = float(points[valid].mean()) if valid.any() else float("nan")
    reps["mean_auroc"] = mean_reps
    summary = {"per_class": per_class, **with_ci("mean_auroc", mean_point, mean_reps),
               "mean_auroc_classes": [n for n, v in zip(label_names, valid) if v]}
    if not valid.any():
        summary["mean_auroc_reason"] = "no finding has both positive and negative images"
    return summary, reps

