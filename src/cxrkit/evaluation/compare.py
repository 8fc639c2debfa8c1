"""Comparing two models on the same images: DeLong's test and the patient-clustered paired bootstrap."""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy.stats import norm, rankdata

from cxrkit.evaluation.bootstrap import percentile_ci


def delong_test(y: np.ndarray, s1: np.ndarray, s2: np.ndarray) -> dict:
    """DeLong et al. (1988) test of AUROC(s1) - AUROC(s2) on the same images (Sun & Xu 2014 midrank form).

    Treats images as independent (it ignores patient clustering; the paired bootstrap does not).
    """
    known = ~np.isnan(y)
    y, s1, s2 = y[known] >= 0.5, s1[known], s2[known]
    m, n = int(y.sum()), int((~y).sum())
    if m < 2 or n < 2:
        return {"auroc_diff": None, "z": None, "p_value": None, "reason": "needs >= 2 positives and negatives"}
    aucs, v10, v01 = [], [], []
    for s in (s1, s2):
        pos, neg = s[y], s[~y]
        tx, ty, tz = rankdata(pos), rankdata(neg), rankdata(np.r_[pos, neg])
        auc = (tz[:m].sum() - m * (m + 1) / 2) / (m * n)
        aucs.append(auc)
        v10.append((tz[:m] - tx) / n)
        v01.append(1 - (tz[m:] - ty) / m)
    s10, s01 = np.cov(np.vstack(v10)), np.cov(np.vstack(v01))
    var = (s10[0, 0] + s10[1, 1] - 2 * s10[0, 1]) / m + (s01[0, 0] + s01[1, 1] - 2 * s01[0, 1]) / n
    diff = aucs[0] - aucs[1]
    if var <= 0:
        return {"auroc_diff": float(diff), "z": None, "p_value": 1.0 if diff == 0 else 0.0,
                "reason": "zero variance (identical or perfectly separated scores)"}
    z = diff / np.sqrt(var)
    return {"auroc_diff": float(diff), "z": float(z), "p_value": float(2 * norm.sf(abs(z)))}


def paired_bootstrap(reps_a: np.ndarray, reps_b: np.ndarray, point_a: float, point_b: float) -> dict:
    """Difference of a metric between two models from replicates drawn on the same patients (paired)."""
    d = np.asarray(reps_a, np.float64) - np.asarray(reps_b, np.float64)
    lo, hi = percentile_ci(d)
    d = d[~np.isnan(d)]
    # two-sided p: how often the replicate difference falls on the other side of zero
    p = float(min(1.0, 2 * min((d <= 0).mean(), (d >= 0).mean()))) if d.size else None
    diff = point_a - point_b
    return {"diff": None if not np.isfinite(diff) else float(diff), "ci_low": None if np.isnan(lo) else lo,
            "ci_high": None if np.isnan(hi) else hi, "p_value": p}


def compare_models(Y: np.ndarray, S_a: np.ndarray, S_b: np.ndarray, label_names: Sequence[str], summary_a: dict,
                   summary_b: dict, reps_a: dict, reps_b: dict) -> dict:
    """Per-finding and mean AUROC differences (A - B): DeLong and paired patient-clustered bootstrap."""
    out = {"per_class": {}, "note": "A = evaluated bundle, B = --compare bundle; differences are A - B"}
    for c, name in enumerate(label_names):
        pa, pb = summary_a["per_class"][name]["auroc"], summary_b["per_class"][name]["auroc"]
        if pa is None or pb is None:
            out["per_class"][name] = {"reason": summary_a["per_class"][name].get("reason", "AUROC undefined")}
            continue
        out["per_class"][name] = {"delong": delong_test(Y[:, c], S_a[:, c], S_b[:, c]),
                                  "paired_bootstrap": paired_bootstrap(reps_a["auroc"][:, c], reps_b["auroc"][:, c],
                                                                       pa, pb)}
    ma, mb = summary_a["mean_auroc"], summary_b["mean_auroc"]
    out["mean_auroc"] = paired_bootstrap(reps_a["mean_auroc"], reps_b["mean_auroc"],
                                         ma if ma is not None else np.nan, mb if mb is not None else np.nan)
    return out
