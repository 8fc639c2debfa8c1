"""Operating points chosen on validation (Youden, sensitivity at fixed specificity, F1-optimal), scored on test."""
from __future__ import annotations

from typing import Sequence

import numpy as np
from sklearn.metrics import precision_recall_curve, roc_curve

from cxrkit.evaluation.bootstrap import ClusterBootstrap
from cxrkit.evaluation.metrics import CONFUSION_METRICS, confusion_indicators, confusion_rates
from cxrkit.evaluation.summary import with_ci

POLICIES = ("youden", "sens_at_spec90", "sens_at_spec95", "f1")
POLICY_TITLES = {"youden": "Youden J", "sens_at_spec90": "sensitivity at 90% specificity",
                 "sens_at_spec95": "sensitivity at 95% specificity", "f1": "F1-optimal"}


def choose_threshold(y: np.ndarray, s: np.ndarray, policy: str) -> float | None:
    """Threshold (predict positive when score >= t) for one finding; None when y lacks positives or negatives."""
    known = ~np.isnan(y)
    y, s = (y[known] >= 0.5).astype(int), s[known]
    if y.size == 0 or y.min() == y.max():
        return None
    if policy == "f1":
        prec, rec, thr = precision_recall_curve(y, s)
        with np.errstate(invalid="ignore", divide="ignore"):
            f1 = np.where(prec + rec > 0, 2 * prec * rec / (prec + rec), 0.0)[:-1]
        return float(thr[int(np.argmax(f1))])
    fpr, tpr, thr = roc_curve(y, s, drop_intermediate=False)
    # sklearn's first threshold is +inf (nothing positive); keep it finite (and float32-safe) just above the top score
    thr = thr.astype(np.float64)
    thr[0] = float(np.nextafter(np.float32(s.max()), np.float32(np.inf)))
    if policy == "youden":
        return float(thr[int(np.argmax(tpr - fpr))])
    if policy in ("sens_at_spec90", "sens_at_spec95"):
        spec = 0.90 if policy == "sens_at_spec90" else 0.95
        ok = np.flatnonzero(1 - fpr >= spec)  # tpr rises along the curve: the last admissible point is best
        return float(thr[ok[-1]])
    raise ValueError(f"unknown operating-point policy {policy!r}; choose from {POLICIES}")


def choose_operating_points(Y: np.ndarray, S: np.ndarray, label_names: Sequence[str],
                            policies: Sequence[str] = POLICIES) -> dict[str, dict[str, float | None]]:
    """{finding: {policy: threshold}} from validation labels ``Y`` and scores ``S`` (N x C)."""
    return {name: {p: choose_threshold(Y[:, c], S[:, c], p) for p in policies} for c, name in enumerate(label_names)}


def operating_metrics(Y: np.ndarray, S: np.ndarray, label_names: Sequence[str], thresholds: dict,
                      boot: ClusterBootstrap, idx: np.ndarray | None = None) -> dict:
    """Sensitivity, specificity, PPV, NPV, F1 (+ CIs) on images ``idx`` at each finding's chosen thresholds.

    Returns {finding: {policy: {"threshold", "sensitivity", "sensitivity_ci_low", ...}}}. All (finding, policy)
    pairs share one matrix product per replicate chunk: weights (R x n) @ indicators (n x 4K).
    """
    idx = np.arange(len(Y)) if idx is None else np.asarray(idx)
    out: dict = {name: {} for name in label_names}
    keys, cols = [], []
    for c, name in enumerate(label_names):
        y = Y[:, c]
        for policy, t in thresholds.get(name, {}).items():
            if t is None:
                out[name][policy] = {"threshold": None,
                                     "reason": "no threshold: validation lacks positives or negatives"}
                continue
            ind = confusion_indicators(y >= 0.5, S[:, c] >= t)
            ind[np.isnan(y)] = 0.0  # unknown labels count nowhere
            keys.append((name, policy, float(t)))
            cols.append(ind)
    if not keys:
        return out
    M = np.concatenate(cols, axis=1)  # n x 4K
    point = M[idx].sum(axis=0)[None]
    reps = boot.apply(lambda m, W: W @ m, M, idx=idx) if boot.n_boot else None
    for k, (name, policy, t) in enumerate(keys):
        p = confusion_rates(*point[:, 4 * k:4 * k + 4].T)
        r = confusion_rates(*reps[:, 4 * k:4 * k + 4].T) if reps is not None else {}
        entry = {"threshold": t}
        for m in CONFUSION_METRICS:
            entry.update(with_ci(m, p[m][0], r.get(m)))
        out[name][policy] = entry
    return out
