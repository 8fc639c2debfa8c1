"""Applying a bundle's stored probability calibration (fitted on validation by cxrkit.evaluation)."""
from __future__ import annotations

import numpy as np


def apply_calibration(logits: np.ndarray, calibration: dict | None) -> np.ndarray:
    """Logits (N x C) -> probabilities, through the bundle's calibration when it has one.

    ``{"method": "temperature", "temperature": [T_c]}``: sigmoid(logit / T_c).
    ``{"method": "isotonic", "x": [[...]], "y": [[...]]}``: piecewise-linear map of the raw probability per class.
    ``{"method": "op_norm", "thresholds": [t_c]}``: torchxrayvision's operating-point normalisation (:func:`op_norm`).
    """
    logits = np.asarray(logits, dtype=np.float64)
    if not calibration:
        return (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)
    method = calibration.get("method")
    if method == "temperature":
        t = np.asarray(calibration["temperature"], dtype=np.float64)
        return (1.0 / (1.0 + np.exp(-logits / t))).astype(np.float32)
    if method == "isotonic":
        p = 1.0 / (1.0 + np.exp(-logits))
        out = np.empty_like(p)
        for c, (xs, ys) in enumerate(zip(calibration["x"], calibration["y"])):
            out[:, c] = np.interp(p[:, c], xs, ys) if len(xs) else p[:, c]
        return out.astype(np.float32)
    if method == "op_norm":
        return op_norm(1.0 / (1.0 + np.exp(-logits)), calibration["thresholds"]).astype(np.float32)
    raise ValueError(f"unknown calibration method {method!r}")


def op_norm(p: np.ndarray, thresholds) -> np.ndarray:
    """torchxrayvision's operating-point normalisation: per class, the piecewise-linear map sending 0, t, 1 to 0,
    0.5, 1 (its published operating point t becomes 0.5). Monotone, so rankings and AUROC are unchanged; a class
    without a threshold (NaN) is 0.5 everywhere, as in xrv."""
    t = np.asarray(thresholds, dtype=np.float64).reshape(1, -1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(p < t, p / (2 * t), 1.0 - (1.0 - p) / ((1.0 - t) * 2))
    return np.where(np.isnan(t), 0.5, out)
