"""Validation metrics used while training (per-class AUROC) and the per-class decision thresholds (Youden J)."""
from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

THRESHOLD_POLICY = "youden-validation"


def _known(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    keep = ~np.isnan(y)
    return (y[keep] > 0.5).astype(np.int64), p[keep]


def per_class_auroc(labels: np.ndarray, scores: np.ndarray, names) -> dict[str, float | None]:
    """AUROC per class over known labels; None where a class lacks positives or negatives in this split."""
    out: dict[str, float | None] = {}
    for c, name in enumerate(names):
        y, p = _known(labels[:, c], scores[:, c])
        out[name] = float(roc_auc_score(y, p)) if 0 < y.sum() < len(y) else None
    return out


def mean_auroc(per_class: dict[str, float | None]) -> float:
    """Mean over the classes where AUROC is defined (NaN when none is)."""
    vals = [v for v in per_class.values() if v is not None]
    return float(np.mean(vals)) if vals else float("nan")


def youden_thresholds(labels: np.ndarray, probs: np.ndarray, names, default: float = 0.5) -> dict[str, float]:
    """Per class, the probability threshold maximising Youden's J = TPR - FPR on the validation split.

    Classes without both positives and negatives keep ``default``.
    """
    out = {}
    for c, name in enumerate(names):
        y, p = _known(labels[:, c], probs[:, c])
        if not 0 < y.sum() < len(y):
            out[name] = float(default)
            continue
        fpr, tpr, thr = roc_curve(y, p)
        best = int(np.argmax(tpr - fpr))
        # roc_curve's first threshold is +inf (nothing positive); keep thresholds inside the probability range
        out[name] = float(np.clip(thr[best], 0.0, 1.0))
    return out
