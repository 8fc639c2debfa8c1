"""Small raster helpers: geometry in normalised coordinates (0..1 of the film), drawn with OpenCV.

Points are ``(N, 2)`` float arrays of ``(x, y)`` in units of the film width; they are drawn with 4 bits of
sub-pixel precision so shapes move smoothly even on small (64 px) films.
"""
from __future__ import annotations

import cv2
import numpy as np

SHIFT = 4
_ONE = 1 << SHIFT


def to_fixed(pts: np.ndarray, size: int) -> np.ndarray:
    """Normalised points -> OpenCV fixed-point pixel coordinates (pixel i's centre is at i + 0.5)."""
    return np.round((np.asarray(pts, dtype=np.float64) * size - 0.5) * _ONE).astype(np.int32)


def fill_poly(img: np.ndarray, pts, value: float, size: int) -> None:
    """Fill one polygon (or a list of polygons) given in normalised coordinates."""
    # one call per polygon: a multi-polygon fillPoly would leave overlaps empty (even-odd rule)
    for p in (pts if isinstance(pts, list) else [pts]):
        cv2.fillPoly(img, [to_fixed(p, size)], value, lineType=cv2.LINE_8, shift=SHIFT)


def fill_disjoint(img: np.ndarray, polys: list, value: float, size: int) -> None:
    """Fill several polygons that do not overlap, in one call (faster than :func:`fill_poly` on a list);
    ``polys`` is a list of (N_i, 2) arrays or one (K, N, 2) array."""
    pts = list(to_fixed(polys, size)) if isinstance(polys, np.ndarray) else [to_fixed(p, size) for p in polys]
    cv2.fillPoly(img, pts, value, lineType=cv2.LINE_8, shift=SHIFT)


def polylines(img: np.ndarray, lines: list, value: float, thickness_px: float, size: int) -> None:
    """Draw open polylines of a given thickness in pixels (at least 1).

    ``lines`` is a list of (N_i, 2) arrays or one (K, N, 2) array of K equal-length polylines (faster).
    """
    if len(lines) == 0:
        return
    pts = to_fixed(lines, size) if isinstance(lines, np.ndarray) else [to_fixed(p, size) for p in lines]
    cv2.polylines(img, pts, False, value, max(1, int(round(thickness_px))), lineType=cv2.LINE_8, shift=SHIFT)


def chaikin(pts: np.ndarray, iterations: int = 3) -> np.ndarray:
    """Corner-cutting smoothing of an open polyline that keeps both end points (sharp angles stay at ends)."""
    p = np.asarray(pts, dtype=np.float64)
    for _ in range(iterations):
        q = 0.75 * p[:-1] + 0.25 * p[1:]
        r = 0.25 * p[:-1] + 0.75 * p[1:]
        mid = np.empty((2 * len(q), 2))
        mid[0::2], mid[1::2] = q, r
        p = np.vstack([p[:1], mid[1:-1], p[-1:]])
    return p


def ellipse_pts(cx: float, cy: float, a: float, b: float, angle_deg: float = 0.0, n: int = 40) -> np.ndarray:
    """A closed ellipse outline (semi-axes a along x, b along y before rotating by ``angle_deg``)."""
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    c, s = np.cos(np.deg2rad(angle_deg)), np.sin(np.deg2rad(angle_deg))
    x, y = a * np.cos(t), b * np.sin(t)
    return np.stack([cx + c * x - s * y, cy + s * x + c * y], axis=1)


def lowres_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Smooth random field in about [-1, 1]: a coarse Gaussian grid upsampled (bilinear) to h x w."""
    gh, gw = max(2, round(cells * h / max(h, w))), max(2, round(cells * w / max(h, w)))
    grid = rng.standard_normal((gh, gw)).astype(np.float32) * 0.6
    return cv2.resize(grid, (w, h), interpolation=cv2.INTER_LINEAR)


def blur(img: np.ndarray, sigma_px: float) -> np.ndarray:
    """Gaussian blur with an explicit, small kernel (fast on small films)."""
    if sigma_px <= 0.05:
        return img
    k = 2 * int(np.ceil(2.5 * sigma_px)) + 1
    return cv2.GaussianBlur(img, (k, k), sigma_px, borderType=cv2.BORDER_REPLICATE)


class Patch:
    """A float32 region of interest of an S x S layer, in pixels, clipped to the film.

    Findings draw into a patch (cheap blurs, exact footprints), then :meth:`add_to` the layer.
    """

    def __init__(self, size: int, x0: float, y0: float, x1: float, y1: float, margin: float = 0.0):
        """Bounds are normalised; ``margin`` (normalised) is added on every side."""
        self.size = size
        self.px0 = int(np.clip(np.floor((x0 - margin) * size), 0, size - 1))
        self.py0 = int(np.clip(np.floor((y0 - margin) * size), 0, size - 1))
        self.px1 = int(np.clip(np.ceil((x1 + margin) * size), self.px0 + 1, size))
        self.py1 = int(np.clip(np.ceil((y1 + margin) * size), self.py0 + 1, size))
        self.data = np.zeros((self.py1 - self.py0, self.px1 - self.px0), dtype=np.float32)

    @property
    def slices(self) -> tuple[slice, slice]:
        return slice(self.py0, self.py1), slice(self.px0, self.px1)

    def local(self, pts) -> np.ndarray:
        """Normalised film points -> normalised coordinates of this patch's own frame (for draw helpers)."""
        p = np.asarray(pts, dtype=np.float64)
        return (p * self.size - np.array([self.px0, self.py0])) / self.size

    def fill(self, pts, value: float) -> None:
        polys = [self.local(p) for p in (pts if isinstance(pts, list) else [pts])]
        fill_poly(self.data, polys, value, self.size)

    def lines(self, lines: list, value: float, thickness_px: float) -> None:
        local = self.local(lines) if isinstance(lines, np.ndarray) else [self.local(p) for p in lines]
        polylines(self.data, local, value, thickness_px, self.size)

    def grid(self) -> tuple[np.ndarray, np.ndarray]:
        """Normalised film coordinates of the patch's pixel centres: (1, w) x-row and (h, 1) y-column."""
        xs = (np.arange(self.px0, self.px1, dtype=np.float32) + 0.5) / self.size
        ys = (np.arange(self.py0, self.py1, dtype=np.float32) + 0.5) / self.size
        return xs[None, :], ys[:, None]

    def crop(self, layer: np.ndarray) -> np.ndarray:
        return layer[self.slices]

    def add_to(self, layer: np.ndarray, scale: float = 1.0) -> None:
        layer[self.slices] += self.data * scale if scale != 1.0 else self.data

    def footprint(self, frac: float = 0.2) -> tuple[float, float, float, float] | None:
        """Pixel box (x0, y0, x1, y1) of where |data| exceeds ``frac`` of its peak, or None when empty."""
        mag = np.abs(self.data)
        peak = float(mag.max()) if mag.size else 0.0
        if peak <= 0:
            return None
        x, y, w, h = cv2.boundingRect((mag > frac * peak).astype(np.uint8))
        if w == 0 or h == 0:
            return None
        return (self.px0 + x, self.py0 + y, self.px0 + x + w, self.py0 + y + h)


def union_box(*boxes) -> tuple[float, float, float, float] | None:
    """Smallest (x0, y0, x1, y1) box holding all given boxes (None entries ignored)."""
    boxes = [b for b in boxes if b is not None]
    if not boxes:
        return None
    b = np.asarray(boxes, dtype=np.float64)
    return (float(b[:, 0].min()), float(b[:, 1].min()), float(b[:, 2].max()), float(b[:, 3].max()))
