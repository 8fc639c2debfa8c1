"""Subgroup analysis: every metric by sex, age band, view and data source, with the gap to the overall value and
the underdiagnosis rate (Seyyed-Kalantari et al., Nature Medicine 2021: predicted "no finding" while the patient
has at least one finding)."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from cxrkit.evaluation.bootstrap import ClusterBootstrap, percentile_ci
from cxrkit.evaluation.metrics import CONFUSION_METRICS
from cxrkit.evaluation.operating import operating_metrics
from cxrkit.evaluation.summary import ranking_summary, with_ci

AGE_BANDS = ((0, 20, "0-20"), (20, 40, "20-40"), (40, 60, "40-60"), (60, 80, "60-80"), (80, np.inf, "80+"))
SUBGROUP_DIMENSIONS = ("sex", "age", "view", "source")


def age_band(age) -> str | None:
    """Band of an age in years (lower bound inclusive); None when unknown."""
    if age is None or not np.isfinite(age):
        return None
    for lo, hi, name in AGE_BANDS:
        if lo <= age < hi:
            return name
    return None


def group_labels(meta: pd.DataFrame) -> dict[str, np.ndarray]:
    """{dimension: per-image group name (object array, None = unknown)} from the cache index columns."""
    n = len(meta)

    def col(name):
        return meta[name].to_numpy(object) if name in meta else np.full(n, None, object)

    sex = np.array([s if s in ("M", "F") else None for s in col("sex")], object)
    ages = pd.to_numeric(meta["age"], errors="coerce").to_numpy(float) if "age" in meta else np.full(n, np.nan)
    view = np.array([v if v in ("PA", "AP") else (None if v is None or v != v else "other") for v in col("view")],
                    object)
    source = np.array([None if s is None or s != s else str(s) for s in col("source")], object)
    return {"sex": sex, "age": np.array([age_band(a) for a in ages], object), "view": view, "source": source}


def _underdiagnosis(Y: np.ndarray, pred_any: np.ndarray, W: np.ndarray) -> np.ndarray:
    has = (np.nan_to_num(Y, nan=0.0) >= 0.5).any(axis=1)
    missed = has & ~pred_any
    den = W @ has
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (W @ missed) / den, np.nan)


def underdiagnosis(Y: np.ndarray, S: np.ndarray, thresholds: np.ndarray, boot: ClusterBootstrap,
                   idx: np.ndarray) -> tuple[dict, np.ndarray]:
    """Rate of "no finding" predictions among images with >= 1 positive finding (+ CI) and its replicates.

    A finding whose threshold is unknown (NaN) never fires.
    """
    with np.errstate(invalid="ignore"):
        pred_any = (S >= np.where(np.isnan(thresholds), np.inf, thresholds)).any(axis=1)
    has = (np.nan_to_num(Y[idx], nan=0.0) >= 0.5).any(axis=1)
    point = _underdiagnosis(Y[idx], pred_any[idx], np.ones((1, len(idx))))[0]
    reps = boot.apply(_underdiagnosis, Y, pred_any, idx=idx) if boot.n_boot else np.zeros(0)
    # context for a rate of 0: a model that flags some finding on (nearly) every image cannot underdiagnose
    no_pred = ~pred_any[idx]
    normal = ~has
    context = {"predicted_no_finding_share": float(no_pred.mean()) if len(idx) else None,
               "normal_predicted_normal_share": float(no_pred[normal].mean()) if normal.any() else None}
    return {**with_ci("underdiagnosis_rate", point, reps), "n_with_finding": int(has.sum()), **context}, reps


def _gap(point: float | None, overall: float | None, reps: np.ndarray, overall_reps: np.ndarray) -> dict:
    if point is None or overall is None:
        return {"gap": None, "gap_ci_low": None, "gap_ci_high": None}
    lo, hi = percentile_ci(np.asarray(reps) - np.asarray(overall_reps)) if len(reps) else (np.nan, np.nan)
    return {"gap": point - overall, "gap_ci_low": None if np.isnan(lo) else lo,
            "gap_ci_high": None if np.isnan(hi) else hi}


def _operating_gaps(group_ops: dict, overall: dict) -> None:
    """Add ``<metric>_gap`` (group - overall, point values) to each finding's Youden operating point."""
    for name, pols in group_ops.items():
        g = pols.get("youden", {})
        o = overall["per_class"].get(name, {}).get("operating_points", {})
        o = o.get("youden") or o.get("bundle") or {}
        for m in CONFUSION_METRICS:
            if g.get(m) is not None and o.get(m) is not None:
                g[f"{m}_gap"] = g[m] - o[m]


def subgroup_analysis(Y: np.ndarray, S: np.ndarray, meta: pd.DataFrame, patient_ids: np.ndarray,
                      label_names: Sequence[str], thresholds: dict, boot: ClusterBootstrap, overall: dict,
                      overall_reps: dict, min_images: int = 10) -> dict:
    """Metrics per subgroup; ``thresholds`` = {finding: {"youden": t, ...}} chosen on validation, ``overall`` and
    ``overall_reps`` = the whole-test-set :func:`ranking_summary` result (gaps are paired: same replicates)."""
    groups = group_labels(meta)
    youden = {n: {"youden": thresholds.get(n, {}).get("youden")} for n in label_names}
    t_vec = np.array([np.nan if youden[n]["youden"] is None else youden[n]["youden"] for n in label_names])
    all_idx = np.arange(len(Y))
    overall_ud, overall_ud_reps = underdiagnosis(Y, S, t_vec, boot, all_idx)
    out: dict = {"overall_underdiagnosis": overall_ud, "thresholds": "youden (validation)", "dimensions": {}}
    for dim in SUBGROUP_DIMENSIONS:
        labels = groups[dim]
        names = sorted({g for g in labels if g is not None})
        dim_out = {}
        for g in names:
            idx = np.flatnonzero(labels == g)
            entry = {"n_images": int(idx.size), "n_patients": int(len(np.unique(np.asarray(patient_ids)[idx])))}
            if idx.size < min_images:
                entry["reason"] = f"fewer than {min_images} images: not analysed"
                dim_out[g] = entry
                continue
            summ, reps = ranking_summary(Y, S, label_names, boot, idx)
            for name, pc in summ["per_class"].items():
                pc.update(_gap(pc["auroc"], overall["per_class"][name]["auroc"],
                               reps["auroc"][:, label_names.index(name)] if boot.n_boot else [],
                               overall_reps["auroc"][:, label_names.index(name)] if boot.n_boot else []))
            entry.update(summ)
            entry["mean_auroc_gap"] = _gap(summ["mean_auroc"], overall["mean_auroc"], reps["mean_auroc"],
                                           overall_reps["mean_auroc"])
            entry["operating_points"] = operating_metrics(Y, S, label_names, youden, boot, idx)
            _operating_gaps(entry["operating_points"], overall)
            ud, ud_reps = underdiagnosis(Y, S, t_vec, boot, idx)
            ud["gap"] = _gap(ud["underdiagnosis_rate"], overall_ud["underdiagnosis_rate"], ud_reps, overall_ud_reps)
            entry["underdiagnosis"] = ud
            dim_out[g] = entry
        out["dimensions"][dim] = dim_out
    return out
