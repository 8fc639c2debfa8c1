"""Drawing a phantom film: anatomy -> density layers -> pose, exposure and noise -> uint8 pixels.

Density ("how much the body attenuates", ~0 air .. ~0.8 bone over mediastinum) lives in three float32
layers: ``soft`` (body, lungs, heart, abdomen; blurred a little), ``fine`` (bones and vessels; blurred less)
and ``lesion`` (finding overlays, already blurred by each finding). Findings may change the anatomy before the
layers are built, edit the masks/keep-maps in between, and add overlays afterwards.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from cxrkit.data.phantom.anatomy import Anatomy
from cxrkit.data.phantom.draw import blur, fill_poly

DENSITY_FLOOR = 0.08  # density shown black (air beside the patient)
DENSITY_RANGE = 0.80  # density span from black to white before exposure variation
FILM_K = 2.0          # film-curve saturation


@dataclass
class Scene:
    """One film being drawn at ``size`` x ``size`` in the canonical (unrotated) frame."""

    size: int
    anat: Anatomy
    outlines: list[dict]
    lung_side: list[np.ndarray]      # uint8 0/1 per side, heart and knob removed
    heart: np.ndarray                # uint8 0/1
    soft: np.ndarray
    fine: np.ndarray
    lesion: np.ndarray
    lung: np.ndarray                 # uint8 0/1, both lung fields
    xs: np.ndarray = field(repr=False, default=None)  # (1, S) normalised pixel-centre x
    ys: np.ndarray = field(repr=False, default=None)  # (S, 1)
    vessel_keep: np.ndarray | None = None  # multiplier on lung markings (None: all kept)
    air_extra: np.ndarray | None = None    # extra lucency inside the lungs (None: none)

    def add_air(self, amount) -> None:
        """Extra lucency inside the lungs (an array or a broadcastable scalar/column)."""
        if self.air_extra is None:
            self.air_extra = np.zeros((self.size, self.size), np.float32)
        self.air_extra += amount

    def remove_markings(self, where: np.ndarray) -> None:
        """Erase lung markings (vessels, texture) where ``where`` (0..1) is 1."""
        if self.vessel_keep is None:
            self.vessel_keep = np.ones((self.size, self.size), np.float32)
        self.vessel_keep *= 1 - where

    def px(self, v: float) -> float:
        """A normalised length in pixels."""
        return v * self.size

    def heart_span(self, y: float) -> tuple[float, float] | None:
        """Film-x extent of the heart on row ``y`` (normalised), or None when the row misses it."""
        row = int(np.clip(y * self.size, 0, self.size - 1))
        idx = np.flatnonzero(self.heart[row])
        if idx.size == 0:
            return None
        return (idx[0] + 0.5) / self.size, (idx[-1] + 0.5) / self.size

    def lung_point(self, side: int, s: float, q: float) -> tuple[float, float]:
        """A point inside lung ``side``: ``s`` 0 apex .. 1 base (vertical), ``q`` 0 medial .. 1 chest wall."""
        a = self.anat
        lateral = self.outlines[side]["lateral"]
        y = a.top[side] + (0.12 + 0.76 * s) * a.height(side)
        y = min(y, float(a.diaphragm_y(side, a.x(side, 0.5 * a.lat[side]))) - 0.02)
        half = lateral[:, 1] <= y
        wall = float(np.abs(lateral[half, 0] - 0.5).max()) if half.any() else a.lat[side]
        inner = a.med[side] + 0.02
        span = self.heart_span(y)
        if span is not None:
            inner = max(inner, abs((span[0] if side == 0 else span[1]) - 0.5) + 0.02)
        r = inner + (0.08 + 0.84 * q) * max(wall - 0.02 - inner, 0.01)
        return float(a.x(side, r)), float(y)


def build_scene(anat: Anatomy, size: int) -> Scene:
    """Rasterise masks and the base density layers (before the film is composed)."""
    s = size
    xs = ((np.arange(s, dtype=np.float32) + 0.5) / s)[None, :]
    ys = ((np.arange(s, dtype=np.float32) + 0.5) / s)[:, None]
    anat.freeze()
    outlines = [anat.lung_outline(0), anat.lung_outline(1)]
    heart = np.zeros((s, s), np.uint8)
    fill_poly(heart, anat.heart_polygon(), 1, s)
    # below the diaphragm the heart merges with the liver; it reaches down to the lower lung's medial end
    base = max(anat.heart_y, *(c - 0.72 * d for c, d in zip(anat.cp, anat.dome_h)))
    heart[int(np.ceil(base * s)) + 1:] = 0
    knob = np.zeros((s, s), np.uint8)
    fill_poly(knob, anat.aortic_knob(), 1, s)
    sides = []
    for k in (0, 1):
        m = np.zeros((s, s), np.uint8)
        fill_poly(m, outlines[k]["polygon"], 1, s)
        sides.append(m & ~(heart | knob) & 1)
    zeros = lambda: np.zeros((s, s), np.float32)
    return Scene(size=s, anat=anat, outlines=outlines, lung_side=sides, heart=heart, soft=zeros(), fine=zeros(),
                 lesion=zeros(), lung=sides[0] | sides[1], xs=xs, ys=ys)


@dataclass
class Film:
    """A finished film: pixels, lung mask and boxes, all in the output frame."""

    image: np.ndarray                                  # uint8 H x W
    lung_mask: np.ndarray                              # uint8 0/255
    boxes: dict[str, tuple[float, float, float, float]]  # finding -> (x, y, w, h) in pixels
    ctr: float                                         # measured cardiothoracic ratio on the film


def film_lut(gamma: float) -> np.ndarray:
    """4096-entry uint8 table: linear exposure 0..1 -> saturating film response -> gamma -> grey."""
    x = np.arange(4096) / 4095.0
    y = (1 - np.exp(-FILM_K * x)) / (1 - np.exp(-FILM_K))
    return np.round(255.0 * y**gamma).astype(np.uint8)


def grain(rng: np.random.Generator, size: int) -> np.ndarray:
    """Zero-mean, unit-variance film grain: the sum of two uniform bytes (a triangular, bell-like
    distribution), about 5x faster than ``standard_normal`` and indistinguishable on a film."""
    b = rng.integers(0, 1 << 16, (size, size), dtype=np.uint16).view(np.uint8).reshape(size, size, 2)
    total = b[..., 0].astype(np.float32)
    total += b[..., 1]
    total -= 255.0
    total *= 1.0 / 104.5
    return total


def pose_matrix(anat: Anatomy, size: int) -> np.ndarray:
    """The 2x3 affine that places the canonical drawing: rotation about the centre, zoom, shift."""
    c = size / 2.0
    m = cv2.getRotationMatrix2D((c - 0.5, c - 0.5), anat.rotation, anat.zoom)
    m[:, 2] += np.array(anat.shift) * size
    return m


def finish(sc: Scene, boxes_px: dict, noise_rng: np.random.Generator, noise: float) -> Film:
    """Blur, pose, expose and add noise; transform masks and boxes into the output frame."""
    a, s = sc.anat, sc.size
    k = s / 256.0
    dens = blur(sc.soft, 1.1 * k)
    dens += blur(sc.fine, 0.6 * k)
    dens += sc.lesion
    m = pose_matrix(a, s)
    dens = cv2.warpAffine(dens, m, (s, s), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    lung = cv2.warpAffine(sc.lung * np.uint8(255), m, (s, s), flags=cv2.INTER_NEAREST,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)

    # exposure (gain, offset) on density, noise, then the film curve: a saturating response that compresses
    # contrast in dense regions (ribs fade over the heart and abdomen) folded with gamma into one lookup table
    lin = dens * (a.gain / DENSITY_RANGE) + (a.offset - DENSITY_FLOOR / DENSITY_RANGE)
    if noise > 0:
        lin += grain(noise_rng, s) * (noise * (0.5 + np.clip(lin, 0, 1)))
    q = cv2.min(cv2.multiply(lin, 4095.0, dtype=cv2.CV_16U), 4095)  # OpenCV rounds and saturates below 0
    image = np.take(film_lut(a.gamma), q)

    out_boxes = {}
    for name, (x0, y0, x1, y1) in boxes_px.items():
        corners = np.array([[x0, y0, 1], [x1, y0, 1], [x0, y1, 1], [x1, y1, 1]], dtype=np.float64)
        # corners are pixel edges; the affine maps pixel centres, hence the half-pixel shifts
        t = (corners - [0.5, 0.5, 0]) @ m.T + 0.5
        bx0, by0 = np.clip(t.min(axis=0), 0, s)
        bx1, by1 = np.clip(t.max(axis=0), 0, s)
        if bx1 - bx0 >= 1 and by1 - by0 >= 1:
            out_boxes[name] = (round(float(bx0), 2), round(float(by0), 2), round(float(bx1 - bx0), 2),
                               round(float(by1 - by0), 2))
    return Film(image=image, lung_mask=lung, boxes=out_boxes, ctr=measure_ctr(sc))


def measure_ctr(sc: Scene) -> float:
    """Cardiothoracic ratio as a reader measures it: widest heart span above the diaphragm over the widest
    inner thoracic (lung-to-lung) span."""
    heart_cols = np.flatnonzero(sc.heart.any(axis=0))
    lung_cols = np.flatnonzero(sc.lung.any(axis=0))
    if heart_cols.size == 0 or lung_cols.size == 0:
        return float("nan")
    return float((heart_cols[-1] - heart_cols[0] + 1) / (lung_cols[-1] - lung_cols[0] + 1))
