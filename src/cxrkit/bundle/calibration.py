"""Applying a bundle's stored probability calibration (fitted on validation by cxrkit.evaluation)."""
from __future__ import annotations

import numpy as np


def apply_calibration(logits: np.ndarray, calibration: dict | None) -> np.ndarray:
    """Logits (N x C) -> probabilities, through the bundle's calibration when it has one.

    ``{"method": "temperature", "temperature": [T_c]}``: sigmoid(logit / T_c).
    ``{"method": "isotonic", "x": [[...]], "y": [[...]]}``: piecewise-linear map of the raw probability per class.
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
    raise ValueError(f"unknown calibration method {method!r}")
