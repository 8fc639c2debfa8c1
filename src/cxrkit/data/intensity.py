"""Intensity facts about a grey film that several stages check: its polarity and its used dynamic range."""
from __future__ import annotations

import numpy as np


def inversion_contrast(img: np.ndarray) -> float:
    """Mediastinum minus lung-field brightness in the middle of the film (positive on a normal chest film,
    negative when the intensities are inverted). ``img`` is a square uint8 fit_square image."""
    n = img.shape[0]
    band = img[int(0.3 * n):int(0.65 * n)].astype(np.float32) / 255.0
    centre = band[:, int(0.45 * n):int(0.55 * n)].mean()
    lungs = np.concatenate([band[:, int(0.18 * n):int(0.35 * n)], band[:, int(0.65 * n):int(0.82 * n)]], axis=1)
    return float(centre - lungs.mean())


def used_range(img: np.ndarray) -> tuple[float, float]:
    """1st and 99th percentile of the pixel values (on at most ~64k evenly strided pixels)."""
    step = max(1, int(np.sqrt(img.size / 65536)))
    return tuple(float(v) for v in np.percentile(img[::step, ::step], (1, 99)))  # type: ignore[return-value]
