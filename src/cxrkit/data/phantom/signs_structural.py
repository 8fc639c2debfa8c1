"""Findings that change the chest's shape or its pleura: Cardiomegaly, Emphysema, Atelectasis, Pneumothorax,
Effusion, Pleural_Thickening, Hernia.

Each sign is a small class used once per film: ``adjust`` edits the anatomy before rasterising, ``prepare``
edits masks/keep-maps before the base layers are drawn, ``draw`` adds overlays and returns the pixel box
``(x0, y0, x1, y1)`` of the sign in the canonical frame. ``c`` is the difficulty's contrast multiplier.
"""
from __future__ import annotations

import cv2
import numpy as np

from cxrkit.data.phantom.anatomy import Anatomy
from cxrkit.data.phantom.draw import Patch, blur, ellipse_pts, fill_poly, polylines, union_box
from cxrkit.data.phantom.scene import Scene


class Sign:
    """Base class: a finding drawn on one film with its own random generator."""

    name = ""

    def __init__(self, rng: np.random.Generator, contrast: float):
        self.rng, self.c = rng, contrast
        self.g = min(contrast, 1.6)  # geometric severity saturates; density keeps scaling with contrast

    def adjust(self, anat: Anatomy) -> None:
        pass

    def prepare(self, sc: Scene) -> None:
        pass

    def draw(self, sc: Scene):
        raise NotImplementedError


def mask_box(mask: np.ndarray):
    x, y, w, h = cv2.boundingRect(mask.astype(np.uint8))
    return None if w == 0 else (x, y, x + w, y + h)


def lung_crop(sc: Scene, p: Patch, side: int | None = None) -> np.ndarray:
    m = sc.lung if side is None else sc.lung_side[side]
    return p.crop(m).astype(np.float32)


class Cardiomegaly(Sign):
    """An enlarged cardiac silhouette: cardiothoracic ratio above 0.5 on a PA film."""

    name = "Cardiomegaly"

    def adjust(self, anat: Anatomy) -> None:
        anat.ctr = 0.5 + self.rng.uniform(0.04, 0.13) * self.g
        anat.heart_b *= 1.0 + 0.5 * (anat.ctr - 0.45)

    def draw(self, sc: Scene):
        return mask_box(sc.heart)


class Emphysema(Sign):
    """Hyperinflated, hyperlucent lungs: low flat diaphragms, sparse peripheral markings, a narrow heart."""

    name = "Emphysema"

    def adjust(self, anat: Anatomy) -> None:
        g = self.g
        anat.cp = [c + 0.035 * g for c in anat.cp]
        anat.dome_h = [d * max(0.2, 1 - 0.5 * g) for d in anat.dome_h]
        anat.heart_y = max(anat.heart_y, anat.medial_diaphragm_y())  # the heart sits on the lowered diaphragm
        anat.lat = [l + 0.008 * g for l in anat.lat]
        anat.ctr *= 1 - 0.08 * g
        anat.vessel_gain = [v * max(0.3, 1 - 0.35 * g) for v in anat.vessel_gain]
        self.bulla = self.rng.random() < 0.5
        self.bulla_at = (int(self.rng.integers(2)), self.rng.uniform(0.05, 0.3), self.rng.uniform(0.4, 0.85),
                         self.rng.uniform(0.035, 0.06))

    def prepare(self, sc: Scene) -> None:
        # upper-zone predominant extra lucency (centrilobular pattern)
        top = min(sc.anat.top)
        sc.add_air((0.045 * self.c) * np.clip(1.2 - (sc.ys - top) * 1.5, 0.4, 1.0))
        if self.bulla:
            side, s, q, r = self.bulla_at
            cx, cy = sc.lung_point(side, s, q)
            m = np.zeros((sc.size, sc.size), np.float32)
            fill_poly(m, ellipse_pts(cx, cy, r, r * 0.85), 1.0, sc.size)
            sc.add_air(0.05 * self.c * m)
            sc.remove_markings(m)
            self.bulla_pts = ellipse_pts(cx, cy, r, r * 0.85)

    def draw(self, sc: Scene):
        if self.bulla:
            p = Patch(sc.size, *self.bulla_pts.min(0), *self.bulla_pts.max(0), margin=0.01)
            p.lines([np.vstack([self.bulla_pts, self.bulla_pts[:1]])], 0.05 * self.c, 1)
            p.data = blur(p.data, 0.5)
            p.add_to(sc.lesion)
        return union_box(mask_box(sc.lung_side[0]), mask_box(sc.lung_side[1]))


class Atelectasis(Sign):
    """Basal collapse: a plate-like or wedge opacity with volume loss (raised hemidiaphragm)."""

    name = "Atelectasis"

    def adjust(self, anat: Anatomy) -> None:
        self.side = int(self.rng.integers(2))
        self.old_cp = anat.cp[self.side]
        lift = self.rng.uniform(0.02, 0.045) * self.g
        anat.cp[self.side] -= lift
        anat.dome_h[self.side] += 0.3 * lift

    def draw(self, sc: Scene):
        r, a, k = self.rng, sc.anat, self.side
        kind_plate = r.random() < 0.6
        if kind_plate:
            cx, cy = sc.lung_point(k, r.uniform(0.68, 0.85), r.uniform(0.3, 0.7))
            half, ang, th = r.uniform(0.05, 0.09), np.deg2rad(r.uniform(-18, 18)), r.uniform(0.01, 0.018)
            d = np.array([np.cos(ang), np.sin(ang)]) * half
            pts = [np.array([(cx, cy) - d, (cx, cy) + d])]
            p = Patch(sc.size, cx - half, cy - half, cx + half, cy + half, margin=0.03)
            p.lines(pts, 1.0, sc.px(th))
            p.data = blur(p.data, 1.0 * sc.size / 256)
        else:
            apex = sc.lung_point(k, r.uniform(0.35, 0.5), 0.1)
            b0, b1 = sc.lung_point(k, 0.97, r.uniform(0.0, 0.25)), sc.lung_point(k, 0.97, r.uniform(0.6, 0.95))
            tri = np.array([apex, b0, b1])
            p = Patch(sc.size, *tri.min(0), *tri.max(0), margin=0.03)
            p.fill(tri, 1.0)
            p.data = blur(p.data, 2.0 * sc.size / 256)
        p.data *= lung_crop(sc, p, k) * (0.22 * self.c)
        p.add_to(sc.lesion)
        # the volume loss: the band between the raised and the former diaphragm belongs to the sign
        # (from the chest wall to the mediastinum: the costophrenic recess and the abdomen below it move too)
        lx = np.append(sc.outlines[k]["diaphragm"][:, 0], a.x(k, a.body_hw))
        dome_top = a.cp[k] - a.dome_h[k]
        vol = (min(lx) * sc.size, (dome_top - 0.01) * sc.size, max(lx) * sc.size, (self.old_cp + 0.01) * sc.size)
        return union_box(p.footprint(0.25), vol)


class Pneumothorax(Sign):
    """Apicolateral air without lung markings, bounded by a thin visceral pleural line."""

    name = "Pneumothorax"

    def prepare(self, sc: Scene) -> None:
        r, a = self.rng, sc.anat
        k = self.side = int(r.integers(2))
        depth = r.uniform(0.04, 0.09) * self.g ** 0.7
        y_lim = a.top[k] + r.uniform(0.6, 0.92) * a.height(k)
        wall = sc.outlines[k]["lateral"]
        wall = wall[wall[:, 1] < y_lim]
        hx, hy = a.hilum(k)
        to_h = np.array([hx, hy]) - wall
        to_h /= np.linalg.norm(to_h, axis=1, keepdims=True)
        w = np.clip((y_lim - wall[:, 1]) / (y_lim - a.top[k]), 0, 1) ** 0.5
        w[: max(1, len(w) // 12)] *= np.linspace(0.3, 1, max(1, len(w) // 12))  # meet the mediastinum gently
        self.line = wall + to_h * (depth * w)[:, None]
        rim = np.zeros((sc.size, sc.size), np.float32)
        fill_poly(rim, np.vstack([wall, self.line[::-1]]), 1.0, sc.size)
        rim *= sc.lung_side[k]
        self.rim = rim
        sc.add_air((0.12 * self.c) * rim)
        sc.remove_markings(rim)

    def draw(self, sc: Scene):
        pts = self.line
        p = Patch(sc.size, *pts.min(0), *pts.max(0), margin=0.01)
        p.lines([pts], 0.16 * self.c, max(1.0, sc.size / 320))
        p.data = blur(p.data, 0.4 * sc.size / 256)
        p.data *= lung_crop(sc, p, self.side)
        p.add_to(sc.lesion)
        return union_box(mask_box(self.rim > 0), p.footprint(0.3))


class Effusion(Sign):
    """Pleural fluid: costophrenic blunting with a meniscus rising along the chest wall."""

    name = "Effusion"

    def draw(self, sc: Scene):
        r, a = self.rng, sc.anat
        sides = [0, 1] if r.random() < 0.3 else [int(r.integers(2))]
        boxes = []
        for k in sides:
            h = a.height(k)
            level = a.cp[k] - r.uniform(0.15, 0.42) * h * (0.6 + 0.4 * min(self.g, 1.5) / 1.5)
            y_med = level + r.uniform(0.45, 0.7) * (a.cp[k] - level)
            p = Patch(sc.size, a.x(k, a.lat[k]) if k == 0 else 0.5, level - 0.02,
                      0.5 if k == 0 else a.x(k, a.lat[k]), a.cp[k] + 0.01, margin=0.02)
            xs, ys = p.grid()
            rr = np.clip((np.abs(xs - 0.5) - 0.25 * a.lat[k]) / (0.75 * a.lat[k]), 0, 1)
            surface = y_med - (y_med - level) * rr**2
            p.data = np.clip((ys - surface) / 0.03, 0, 1).astype(np.float32)
            p.data = blur(p.data * lung_crop(sc, p, k), 1.5 * sc.size / 256)
            p.data *= a.lung_air * min(1.0, 0.55 + 0.35 * self.c)
            p.add_to(sc.lesion)
            boxes.append(p.footprint(0.3))
        return union_box(*boxes)


class PleuralThickening(Sign):
    """A smooth soft-tissue band along the chest wall (or an apical cap)."""

    name = "Pleural_Thickening"

    def draw(self, sc: Scene):
        r, a = self.rng, sc.anat
        k = int(r.integers(2))
        wall = sc.outlines[k]["lateral"]
        n = len(wall)
        if r.random() < 0.25:  # apical cap
            seg = wall[int(0.05 * n): int(0.35 * n)]
        else:
            start = r.uniform(0.35, 0.65)
            seg = wall[int(start * n): int(min(0.97, start + r.uniform(0.2, 0.35)) * n)]
        th = r.uniform(0.012, 0.022) * (0.7 + 0.3 * self.g)
        p = Patch(sc.size, *seg.min(0), *seg.max(0), margin=th + 0.01)
        p.lines([seg], 1.0, 2 * sc.px(th))
        p.data = blur(p.data * lung_crop(sc, p, k), 1.0 * sc.size / 256) * (0.24 * self.c)
        p.add_to(sc.lesion)
        return p.footprint(0.3)


class Hernia(Sign):
    """Hiatus hernia: a retrocardiac gas bubble with a thin wall and an air-fluid level."""

    name = "Hernia"

    def draw(self, sc: Scene):
        r, a = self.rng, sc.anat
        rx, ry = r.uniform(0.035, 0.06), r.uniform(0.028, 0.045)
        cx = 0.5 + r.uniform(-0.01, 0.05)
        cy = a.heart_y - r.uniform(0.03, 0.06)
        level = cy + r.uniform(0.0, 0.45) * ry
        outline = ellipse_pts(cx, cy, rx, ry, r.uniform(-10, 10), n=36)
        p = Patch(sc.size, cx - rx, cy - ry, cx + rx, cy + ry, margin=0.015)
        p.fill(outline, 1.0)
        xs, ys = p.grid()
        gas = p.data * (ys < level)
        wall = np.zeros_like(p.data)
        polylines(wall, [p.local(np.vstack([outline, outline[:1]]))], 1.0, max(1.0, sc.size / 200), sc.size)
        p.data = blur(-0.22 * gas + 0.07 * wall + 0.02 * (p.data - gas), 0.6 * sc.size / 256) * self.c
        p.add_to(sc.lesion)
        return p.footprint(0.15)
