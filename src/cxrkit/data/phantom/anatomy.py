"""The phantom's patient: chest geometry in normalised film coordinates (0..1, x to the film's right).

Film left is the patient's right (PA convention). Side index 0 is the film-left lung (patient right), 1 the
film-right lung (patient left, beside the cardiac apex). Patient traits (build, lung shape, heart size, vessel
tree) come from the patient's generator, so follow-up films of one patient look alike; per-film traits
(inspiration, position, rotation, exposure) come from the film's generator.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from cxrkit.data.phantom.difficulty import Difficulty
from cxrkit.data.phantom.draw import chaikin, ellipse_pts

SIGN = (-1.0, 1.0)  # film-x direction of each side


@dataclass
class Anatomy:
    """Mutable chest geometry; findings adjust it (bigger heart, flat diaphragm) before it is drawn."""

    view: str
    sex: str
    age: int
    top: list[float]          # lung apex y
    lat: list[float]          # lateral lung extent from the midline
    cp: list[float]           # costophrenic angle y
    dome_h: list[float]       # dome height above the costophrenic angle
    med: list[float]          # upper mediastinal half-width (medial lung border)
    hilum_s: float            # hilum height as a fraction of lung height
    ctr: float                # cardiothoracic ratio on a PA film (before AP magnification)
    heart_mag: float          # AP films magnify the heart (divergent beam, heart far from the detector)
    heart_b: float            # visible cardiac height (top of the right heart border to the diaphragm)
    heart_angle: float        # cardiac axis in degrees (higher: apex lower and more lateral)
    lung_air: float           # how dark aerated lung is (density removed by air)
    neck_hw: float
    shoulder_hw: float
    shoulder_y: float
    body_hw: float
    clavicle_y: float
    clavicle_tilt: float
    scapula_over_lung: float  # 0 on PA (scapulae rotated out), ~1 on AP
    rib_scale: float
    breast: float             # 0 = none
    gastric_bubble: tuple[float, float] | None
    vessels: list[list[np.ndarray]]  # per side, per generation: (K, 2, 2) segments in lung-relative units
    # per-film pose and exposure
    shift: tuple[float, float] = (0.0, 0.0)
    zoom: float = 1.0
    rotation: float = 0.0
    gain: float = 1.0
    offset: float = 0.0
    gamma: float = 1.0
    vessel_gain: list[float] = field(default_factory=lambda: [1.0, 1.0])
    # the film's geometry before findings changed it: ribs, vessels, hila, breasts and the heart stay anchored
    # to it, so a sign only changes pixels near itself (a collapse raises one hemidiaphragm, not every rib)
    cp0: list[float] = field(default_factory=list)
    heart_y: float = 0.0
    _outlines: list | None = field(default=None, repr=False)

    def freeze(self) -> None:
        """Fix the geometry (after findings adjusted it) and cache the outlines."""
        self._outlines = None
        self._outlines = [self.lung_outline(0), self.lung_outline(1)]

    # -- derived geometry -------------------------------------------------------------------------
    def height(self, side: int) -> float:
        return self.cp[side] - self.top[side]

    def base_height(self, side: int) -> float:
        return self.cp0[side] - self.top[side]

    def x(self, side: int, r) -> np.ndarray:
        """Film x of a distance ``r`` from the midline on ``side``."""
        return 0.5 + SIGN[side] * np.asarray(r)

    def lung_outline(self, side: int) -> dict[str, np.ndarray]:
        """Film-coordinate outline pieces of one lung: ``lateral`` (apex -> costophrenic angle, via the chest
        wall), ``diaphragm`` (costophrenic angle -> medial end) and the closed ``polygon``."""
        if self._outlines is not None:
            return self._outlines[side]
        t, h, lat, med = self.top[side], self.height(side), self.lat[side], self.med[side]
        h0, cp, dh = self.base_height(side), self.cp[side], self.dome_h[side]
        lateral = chaikin(np.array([
            (med, t + 0.22 * h0), (med + 0.04, t + 0.03), (med + 0.30 * (lat - med), t),
            (med + 0.70 * (lat - med), t + 0.08 * h0), (lat * 0.97, t + 0.30 * h0), (lat, t + 0.60 * h0),
            (lat * 0.985, cp - 0.05 * h), (lat * 0.955, cp),
        ]), 3)
        peak = 0.5 * lat
        dia = chaikin(np.array([
            (lat * 0.955, cp), (lat * 0.90, cp - 0.55 * dh), (lat * 0.76, cp - 0.93 * dh), (peak, cp - dh),
            (peak - 0.45 * (peak - med), cp - 0.93 * dh), (med * 0.6, cp - 0.72 * dh),
        ]), 3)
        to_xy = lambda rp: np.stack([self.x(side, rp[:, 0]), rp[:, 1]], axis=1)
        lateral, dia = to_xy(lateral), to_xy(dia)
        return {"lateral": lateral, "diaphragm": dia, "polygon": np.vstack([lateral, dia[1:]])}

    def diaphragm_y(self, side: int, x) -> np.ndarray:
        """Height of the hemidiaphragm at film x (flat beyond its ends)."""
        d = self.lung_outline(side)["diaphragm"]
        order = np.argsort(d[:, 0])
        return np.interp(x, d[order, 0], d[order, 1])

    def medial_diaphragm_y(self) -> float:
        return float(np.mean([c - 0.72 * d for c, d in zip(self.cp, self.dome_h)]))

    def hilum(self, side: int) -> tuple[float, float]:
        return float(self.x(side, self.med[side] + 0.035)), self.top[side] + self.hilum_s * self.base_height(side)

    def heart_polygon(self) -> np.ndarray:
        """The cardiac silhouette: right atrial border close to the spine, left border sweeping out over the left
        ventricle to the apex on the diaphragm. Its widest span is ctr x thoracic width (x AP magnification);
        the part drawn below the diaphragm merges with the liver and is not seen."""
        width = self.ctr * (self.lat[0] + self.lat[1]) * self.heart_mag * 1.02  # smoothing trims the extremes
        right, left = 0.33 * width, 0.67 * width
        h = self.heart_b * self.heart_mag ** 0.5
        y_md = self.heart_y
        top = y_md - h
        tilt = (self.heart_angle - 18) / 100  # how far down the left ventricle bulges
        pts = np.array([
            (0.5 - 0.03, top - 0.03), (0.5 - 0.6 * right, top + 0.15 * h), (0.5 - right, top + 0.55 * h),
            (0.5 - 0.97 * right, y_md - 0.02), (0.5 - 0.9 * right, y_md + 0.05), (0.5 + 0.85 * left, y_md + 0.05),
            (0.5 + 0.97 * left, y_md - 0.01), (0.5 + left, y_md - (0.3 - tilt) * h),
            (0.5 + 0.8 * left, top + 0.35 * h), (0.5 + 0.5 * left, top + 0.12 * h), (0.5 + 0.04, top - 0.03),
            (0.5 - 0.03, top - 0.03),
        ])
        return chaikin(pts, 3)

    def aortic_knob(self) -> np.ndarray:
        return ellipse_pts(float(self.x(1, self.med[1] - 0.004)), self.top[1] + 0.27 * self.base_height(1), 0.03,
                           0.026, 0, n=24)

    def body_half_width(self, ys: np.ndarray) -> np.ndarray:
        """Half-width of the body silhouette at film heights ``ys`` (neck, shoulders, chest, abdomen)."""
        sy = self.shoulder_y
        ky = np.array([-0.1, sy - 0.09, sy - 0.05, sy, sy + 0.06, self.top[0] + 0.35 * self.base_height(0), 0.85, 1.1])
        kw = np.array([self.neck_hw, self.neck_hw * 1.1, self.shoulder_hw * 0.7, self.shoulder_hw * 0.92,
                       self.shoulder_hw, self.body_hw, self.body_hw * 1.02, self.body_hw * 0.98])
        return np.interp(ys, ky, kw).astype(np.float32)


def _vessel_trees(rng: np.random.Generator) -> list[list[np.ndarray]]:
    """Branching pulmonary vessels from each hilum, as segments in lung-relative units (x: lateral distance /
    lung half-width, y: / lung height): per side, one (K, 2, 2) array per generation. Lower-lobe trunks are
    longer, as in an upright patient; each generation forks in two, shorter and more wayward."""
    base = np.array([-85, -60, -38, -15, 5, 25, 45, 68, 95], dtype=np.float64)
    angles = np.deg2rad(base + rng.uniform(-8, 8, (2, base.size)))  # both sides at once
    length = 0.17 + 0.08 * np.clip(np.sin(angles), 0, 1) + rng.uniform(-0.03, 0.03, angles.shape)
    # trunks leave from along the hilum (upper ones higher), not from one point: no sunburst
    start = np.stack([np.abs(np.sin(angles)) * 0.03, np.sin(angles) * 0.07], axis=-1)
    gens = []
    for _ in range(4):
        end = start + np.stack([np.cos(angles), np.sin(angles) * 0.6], axis=-1) * length[..., None]
        gens.append(np.stack([start, end], axis=2))
        spread = np.deg2rad(rng.uniform(12, 30, angles.shape))
        angles = np.concatenate([angles - spread, angles + spread], axis=1)
        angles += np.deg2rad(rng.normal(0, 9, angles.shape))
        length = np.concatenate([length, length], axis=1) * rng.uniform(0.65, 0.85, angles.shape)
        start = np.concatenate([end, end], axis=1)
    return [[g[k] for g in gens] for k in (0, 1)]


def sample_anatomy(patient: np.random.Generator, film: np.random.Generator, *, view: str, sex: str, age: int,
                   difficulty: Difficulty) -> Anatomy:
    """Draw one film's chest: patient traits from ``patient``, pose/exposure/inspiration from ``film``."""
    build = float(np.clip(patient.normal(), -2, 2))
    lat = 0.37 + 0.018 * build
    top = patient.uniform(0.10, 0.15)
    cp = patient.uniform(0.72, 0.79)
    dome = patient.uniform(0.05, 0.08)
    med = patient.uniform(0.048, 0.062)
    anat = Anatomy(
        view=view, sex=sex, age=age,
        top=[top, top + patient.uniform(-0.01, 0.01)],
        lat=[lat + patient.uniform(-0.008, 0.008), lat + patient.uniform(-0.008, 0.008)],
        cp=[cp, cp + patient.uniform(0.0, 0.02)],
        dome_h=[dome + 0.01, dome + patient.uniform(-0.01, 0.005)],
        med=[med, med + 0.006],
        hilum_s=patient.uniform(0.36, 0.44),
        ctr=patient.uniform(0.39, 0.48),
        heart_mag=1.0,
        heart_b=patient.uniform(0.2, 0.25),
        heart_angle=patient.uniform(12, 24),
        lung_air=patient.uniform(0.30, 0.35),
        neck_hw=patient.uniform(0.10, 0.13),
        shoulder_hw=min(0.5, lat + patient.uniform(0.09, 0.13)),
        shoulder_y=top + patient.uniform(-0.01, 0.03),
        body_hw=min(0.49, lat + patient.uniform(0.05, 0.09) + 0.02 * build),
        clavicle_y=top + patient.uniform(0.02, 0.05),
        clavicle_tilt=patient.uniform(0.035, 0.06),
        scapula_over_lung=0.0,
        rib_scale=patient.uniform(0.95, 1.05),
        breast=patient.uniform(0.7, 1.2) if sex == "F" and age >= 15 else 0.0,
        gastric_bubble=None,
        vessels=_vessel_trees(patient),
    )
    # per film: inspiration, view, pose, exposure
    insp = film.normal(0, 0.012)
    anat.cp = [c + insp for c in anat.cp]
    if view == "AP":
        # supine/portable AP: magnified heart and mediastinum, shallower inspiration, scapulae over the lungs,
        # clavicles projected higher and flatter
        anat.heart_mag = film.uniform(1.12, 1.2)
        anat.med = [m * 1.12 for m in anat.med]
        anat.cp = [c - 0.03 for c in anat.cp]
        anat.scapula_over_lung = film.uniform(0.7, 1.0)
        anat.clavicle_y -= 0.025
        anat.clavicle_tilt *= 0.4
    else:
        anat.heart_mag = 1.0 + film.normal(0, 0.01)
    anat.cp0 = list(anat.cp)
    anat.heart_y = anat.medial_diaphragm_y()
    if film.random() < 0.65:
        anat.gastric_bubble = (film.uniform(0.025, 0.05), film.uniform(0.018, 0.03))
    anat.shift = (float(film.normal(0, 0.015)), float(film.normal(0, 0.015)))
    anat.zoom = float(1 + film.normal(0, 0.03))
    anat.rotation = float(film.uniform(-difficulty.rotation, difficulty.rotation))
    e = difficulty.exposure
    anat.gain = float(np.exp(film.normal(0, 0.18 * e)))
    anat.offset = float(film.normal(0, 0.06 * e))
    anat.gamma = float(np.exp(film.normal(0, 0.2 * e)))
    return anat
