"""Calibration: ECE and reliability curves; temperature or isotonic calibration fitted on validation.

The fitted calibration is stored in the bundle (``config["calibration"]``) in the format that
:func:`cxrkit.bundle.calibration.apply_calibration` applies.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy.optimize import minimize_scalar
from sklearn.isotonic import IsotonicRegression

from cxrkit.data.errors import CxrError

CALIBRATION_METHODS = ("temperature", "isotonic")


class CalibrationError(CxrError):
    """Calibration cannot be fitted (unknown method, or the validation split lacks labels)."""


def reliability(y: np.ndarray, p: np.ndarray, n_bins: int = 15) -> dict:
    """Equal-width reliability curve and expected calibration error of one finding (NaN labels ignored)."""
    known = ~np.isnan(y)
    y, p = (y[known] >= 0.5).astype(np.float64), np.clip(p[known].astype(np.float64), 0, 1)
    bins = np.minimum((p * n_bins).astype(int), n_bins - 1)
    count = np.bincount(bins, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        conf = np.bincount(bins, weights=p, minlength=n_bins) / count
        acc = np.bincount(bins, weights=y, minlength=n_bins) / count
    ece = float(np.nansum(count / max(len(y), 1) * np.abs(acc - conf))) if len(y) else float("nan")
    keep = count > 0
    return {"ece": ece, "n_bins": n_bins, "confidence": conf[keep].tolist(), "observed": acc[keep].tolist(),
            "count": count[keep].tolist()}


def calibration_summary(Y: np.ndarray, P: np.ndarray, label_names: Sequence[str], n_bins: int = 15) -> dict:
    """{"per_class": {name: reliability}, "mean_ece"} over findings with labels."""
    per = {name: reliability(Y[:, c], P[:, c], n_bins) for c, name in enumerate(label_names)}
    eces = [v["ece"] for v in per.values() if np.isfinite(v["ece"])]
    return {"per_class": per, "mean_ece": float(np.mean(eces)) if eces else None, "n_bins": n_bins}


def _fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    def nll(log_t: float) -> float:
        z = logits / np.exp(log_t)
        return float(np.mean(np.logaddexp(0, z) - y * z))  # binary cross-entropy on logits

    res = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded")
    return float(np.exp(res.x))


def fit_calibration(method: str, logits: np.ndarray, Y: np.ndarray) -> dict:
    """Fit per-finding calibration on validation logits (N x C) and labels; returns the bundle's format."""
    if method not in CALIBRATION_METHODS:
        raise CalibrationError(f"unknown calibration method {method!r}; use one of {CALIBRATION_METHODS}")
    logits = np.asarray(logits, dtype=np.float64)
    temps, xs, ys = [], [], []
    for c in range(logits.shape[1]):
        known = ~np.isnan(Y[:, c])
        y, z = (Y[known, c] >= 0.5).astype(np.float64), logits[known, c]
        if y.size == 0 or y.min() == y.max():  # nothing to fit: leave this finding uncalibrated
            temps.append(1.0), xs.append([]), ys.append([])
            continue
        if method == "temperature":
            temps.append(_fit_temperature(z, y))
        else:
            iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(1 / (1 + np.exp(-z)), y)
            xs.append(iso.X_thresholds_.tolist()), ys.append(iso.y_thresholds_.tolist())
    if method == "temperature":
        return {"method": "temperature", "temperature": temps, "fitted_on": "validation"}
    return {"method": "isotonic", "x": xs, "y": ys, "fitted_on": "validation"}
