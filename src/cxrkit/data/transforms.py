"""Geometry shared by prepare, training and inference, so every stage sees identical pixels."""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class SquareFit:
    """How an H x W image was mapped onto a size x size square: scale, then a zero-padded offset."""

    scale: float
    pad_x: float
    pad_y: float

    def box(self, x: float, y: float, w: float, h: float) -> tuple[float, float, float, float]:
        return (x * self.scale + self.pad_x, y * self.scale + self.pad_y, w * self.scale, h * self.scale)


def fit_square(image: np.ndarray, size: int) -> tuple[np.ndarray, SquareFit]:
    """Resize a uint8 grey image to ``size`` x ``size`` keeping its aspect ratio (long side = size).

    The short side is centred and padded with black: nothing of the film is cropped away (boxes stay valid)
    and nothing is stretched. Down-scaling uses area interpolation (alias-free), up-scaling bilinear.
    """
    if image.ndim != 2:
        raise ValueError(f"expected a 2-D grey image, got shape {image.shape}")
    h, w = image.shape
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    if (nh, nw) != (h, w):
        interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        image = cv2.resize(image, (nw, nh), interpolation=interp)
    if nh == nw == size:
        return np.ascontiguousarray(image), SquareFit(scale, 0.0, 0.0)
    out = np.zeros((size, size), dtype=np.uint8)
    py, px = (size - nh) // 2, (size - nw) // 2
    out[py : py + nh, px : px + nw] = image
    return out, SquareFit(scale, float(px), float(py))
