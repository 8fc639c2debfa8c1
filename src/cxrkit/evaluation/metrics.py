"""Weighted ranking and confusion metrics, vectorised over bootstrap replicates.

Each function takes labels ``y`` (n,), scores or predictions (n,) and a weight matrix ``W`` (R x n): row r holds the
multiplicity of every image in bootstrap replicate r (all ones = the plain estimate). Sorting happens once per call;
all replicates are then reduced together with cumulative sums, so 1,000 replicates cost a few array passes.
Tied scores are handled exactly as scikit-learn does (ties count one half in AUROC; one threshold per distinct score).
"""
from __future__ import annotations

import numpy as np


def ranking_metrics(y: np.ndarray, s: np.ndarray, W: np.ndarray) -> dict[str, np.ndarray]:
    """AUROC and average precision (sklearn's step-wise definition) for every weight row: each (R,).

    NaN where a replicate has no positive (or, for AUROC, no negative) weight. Pass ``s`` already sorted in
    descending order (with ``y`` and the columns of ``W`` in the same order) to skip the sort: the bootstrap
    path sorts images once and gathers weights straight into that order.
    """
    y = np.asarray(y, dtype=np.float64) >= 0.5
    s = np.asarray(s, dtype=np.float64)
    W = np.atleast_2d(W)
    if W.dtype not in (np.float32, np.float64):
        W = W.astype(np.float64)
    if s.size > 1 and not np.all(s[1:] <= s[:-1]):
        order = np.argsort(-s, kind="mergesort")
        y, s, W = y[order], s[order], W[:, order]
    n = s.size
    # group of tied scores: [start, end] inclusive positions in the sorted order
    new_group = np.r_[True, s[1:] != s[:-1]] if n else np.zeros(0, bool)
    gid = np.cumsum(new_group) - 1
    starts = np.flatnonzero(new_group)
    ends = np.r_[starts[1:] - 1, n - 1] if n else starts
    pos = np.flatnonzero(y)
    cum_all = np.cumsum(W, axis=1)  # integer counts stay exact in float32 up to 2**24
    wpos = W[:, pos].astype(np.float64)
    cum_pos = np.cumsum(wpos, axis=1)
    P = cum_pos[:, -1] if pos.size else np.zeros(W.shape[0])
    total = cum_all[:, -1].astype(np.float64) if n else np.zeros(W.shape[0])
    N = total - P
    # cumulative positive weight at the end (and before the start) of each positive's tie group
    e, b = ends[gid[pos]], starts[gid[pos]]
    k_e = np.searchsorted(pos, e, side="right") - 1
    k_b = np.searchsorted(pos, b, side="left") - 1
    zeros = np.zeros((W.shape[0], 1))
    cpos_e = cum_pos[:, k_e]
    cpos_b = np.concatenate([zeros, cum_pos], axis=1)[:, k_b + 1]
    call_e = cum_all[:, e].astype(np.float64)
    call_b = np.concatenate([zeros, cum_all.astype(np.float64)], axis=1)[:, b]
    neg_e, neg_b = call_e - cpos_e, call_b - cpos_b
    wins = (wpos * ((N[:, None] - neg_e) + 0.5 * (neg_e - neg_b))).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(call_e > 0, cpos_e / call_e, 0.0)
        auroc = np.where((P > 0) & (N > 0), wins / (P * N), np.nan)
        ap = np.where(P > 0, (wpos * precision).sum(axis=1) / P, np.nan)
    return {"auroc": auroc, "auprc": ap}


def weighted_auroc(y: np.ndarray, s: np.ndarray, W: np.ndarray) -> np.ndarray:
    """AUROC for each weight row (R,); NaN where a replicate has no positive or no negative weight."""
    return ranking_metrics(y, s, W)["auroc"]


def weighted_average_precision(y: np.ndarray, s: np.ndarray, W: np.ndarray) -> np.ndarray:
    """Average precision for each weight row (R,); NaN where a replicate has no positive weight."""
    return ranking_metrics(y, s, W)["auprc"]


CONFUSION_METRICS = ("sensitivity", "specificity", "ppv", "npv", "f1")


def confusion_rates(tp, fp, fn, tn) -> dict[str, np.ndarray]:
    """Sensitivity, specificity, PPV, NPV and F1 from (weighted) confusion counts; NaN where undefined."""
    tp, fp, fn, tn = (np.asarray(x, dtype=np.float64) for x in (tp, fp, fn, tn))
    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            "sensitivity": np.where(tp + fn > 0, tp / (tp + fn), np.nan),
            "specificity": np.where(tn + fp > 0, tn / (tn + fp), np.nan),
            "ppv": np.where(tp + fp > 0, tp / (tp + fp), np.nan),
            "npv": np.where(tn + fn > 0, tn / (tn + fn), np.nan),
            "f1": np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), np.nan),
        }


def confusion_indicators(y: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """n x 4 float32 indicator matrix (tp, fp, fn, tn) of each image; ``W @`` it gives every replicate's counts."""
    y, pred = np.asarray(y, dtype=bool), np.asarray(pred, dtype=bool)
    return np.stack([y & pred, ~y & pred, y & ~pred, ~y & ~pred], axis=1).astype(np.float32)


def weighted_confusion(y: np.ndarray, pred: np.ndarray, W: np.ndarray) -> dict[str, np.ndarray]:
    """Sensitivity, specificity, PPV, NPV and F1 of binary predictions for each weight row (each (R,))."""
    counts = np.atleast_2d(np.asarray(W, dtype=np.float64)) @ confusion_indicators(y, pred)
    return confusion_rates(*counts.T)


def undefined_reason(y: np.ndarray) -> str | None:
    """Why a ranking metric is undefined for labels ``y`` (NaN = unknown ignored), or None when it is defined."""
    y = np.asarray(y, dtype=np.float64)
    known = y[~np.isnan(y)]
    if known.size == 0:
        return "no labelled images"
    n_pos = int((known >= 0.5).sum())
    if n_pos == 0:
        return "no positive images: AUROC/AUPRC undefined"
    if n_pos == known.size:
        return "no negative images: AUROC undefined"
    return None
