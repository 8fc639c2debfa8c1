"""Intensity facts about a film that several stages check: its polarity, its used dynamic range, its colourfulness."""
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


def colourfulness(image: np.ndarray, order: str = "bgr") -> float:
    """Hasler & Suesstrunk (2003) colourfulness of an H x W x 3(+) image; ~0 for grey, > 15 for colour photos."""
    if image.ndim != 3 or image.shape[2] < 3:
        return 0.0
    arr = image[:, :, :3].astype(np.float32)
    if arr.dtype != np.uint8 and image.dtype == np.uint16:
        arr /= 257.0
    b, g, r = (arr[:, :, 0], arr[:, :, 1], arr[:, :, 2]) if order == "bgr" else (arr[:, :, 2], arr[:, :, 1],
                                                                                 arr[:, :, 0])
    rg, yb = r - g, 0.5 * (r + g) - b
    return float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean()))


def sampled_colourfulness(image: np.ndarray, order: str = "bgr", max_pixels: int = 1 << 18) -> float:
    """:func:`colourfulness` on at most ~``max_pixels`` evenly strided pixels: means and standard deviations of a
    1024-px film need no more (a fraction of a unit from the full figure; the colour threshold is 15)."""
    step = max(1, int(np.ceil(np.sqrt(image.shape[0] * image.shape[1] / max_pixels))))
    return colourfulness(image[::step, ::step], order)
