"""Findings inside the lung: Nodule, Mass, Infiltration, Consolidation, Pneumonia, Edema, Fibrosis.

The three airspace opacities differ the way radiologists tell them apart, as far as a phantom can:
Infiltration is faint, multifocal and hazy; Pneumonia is a medium-density, ill-defined, mottled confluent patch
with a few air bronchograms; Consolidation is dense and homogeneous, fills a lobe or segment up to a sharp
fissure and shows clear air bronchograms.
"""
from __future__ import annotations

import numpy as np

from cxrkit.data.phantom.draw import Patch, blur, ellipse_pts, lowres_noise
from cxrkit.data.phantom.scene import Scene
from cxrkit.data.phantom.signs_structural import Sign, lung_crop


def _side(rng: np.random.Generator) -> int:
    return int(rng.integers(2))


def _bronchograms(rng: np.random.Generator, start, direction: float, n: int, length: float) -> list[np.ndarray]:
    """Short branching tubular lucencies radiating from ``start`` roughly along ``direction`` (radians)."""
    lines = []
    for _ in range(n):
        ang = direction + rng.uniform(-0.7, 0.7)
        p0 = np.asarray(start) + rng.normal(0, 0.25 * length, 2)
        p1 = p0 + length * rng.uniform(0.5, 1.0) * np.array([np.cos(ang), np.sin(ang)])
        branch = p1 + 0.5 * length * np.array([np.cos(ang + 0.5), np.sin(ang + 0.5)])
        lines += [np.array([p0, p1]), np.array([0.5 * (p0 + p1), branch])]
    return lines


class Nodule(Sign):
    """A small (< 3 cm) round, fairly well-defined opacity."""

    name = "Nodule"

    def draw(self, sc: Scene):
        r = self.rng
        k = _side(r)
        cx, cy = sc.lung_point(k, r.uniform(0.05, 0.92), r.uniform(0.15, 0.9))
        rad = r.uniform(0.010, 0.019)
        p = Patch(sc.size, cx - rad, cy - rad, cx + rad, cy + rad, margin=0.012)
        p.fill(ellipse_pts(cx, cy, rad, rad * r.uniform(0.85, 1.0), r.uniform(0, 180), n=24), 1.0)
        p.data = blur(p.data, max(0.5, 0.25 * sc.px(rad))) * (0.17 * self.c)
        p.add_to(sc.lesion)
        return p.footprint(0.2)


class Mass(Sign):
    """A large (> 3 cm) lobulated opacity, sometimes spiculated."""

    name = "Mass"

    def draw(self, sc: Scene):
        r = self.rng
        k = _side(r)
        cx, cy = sc.lung_point(k, r.uniform(0.1, 0.75), r.uniform(0.15, 0.75))
        rad = r.uniform(0.035, 0.065)
        p = Patch(sc.size, cx - rad, cy - rad, cx + rad, cy + rad, margin=0.05)
        polys = [ellipse_pts(cx, cy, rad, rad * r.uniform(0.75, 1.0), r.uniform(0, 180))]
        for _ in range(int(r.integers(2, 5))):
            ang, d = r.uniform(0, 2 * np.pi), r.uniform(0.4, 0.7) * rad
            polys.append(ellipse_pts(cx + d * np.cos(ang), cy + d * np.sin(ang), r.uniform(0.4, 0.65) * rad,
                                     r.uniform(0.4, 0.65) * rad, n=24))
        p.fill(polys, 1.0)
        if r.random() < 0.4:
            ang = r.uniform(0, 2 * np.pi, int(r.integers(8, 14)))
            inner = np.stack([cx + 0.8 * rad * np.cos(ang), cy + 0.8 * rad * np.sin(ang)], axis=1)
            outer = inner + (rad * r.uniform(0.4, 0.8, len(ang)))[:, None] * np.stack([np.cos(ang), np.sin(ang)], 1)
            p.lines([np.array([a, b]) for a, b in zip(inner, outer)], 0.35, 1)
        p.data = blur(p.data, 1.0 * sc.size / 256) * (0.22 * self.c)
        p.add_to(sc.lesion)
        return p.footprint(0.2)


class Infiltration(Sign):
    """Faint, ill-defined multifocal haze with a fine reticular texture."""

    name = "Infiltration"

    def draw(self, sc: Scene):
        r = self.rng
        k = _side(r)
        cx, cy = sc.lung_point(k, r.uniform(0.2, 0.85), r.uniform(0.25, 0.75))
        spread = r.uniform(0.06, 0.11)
        p = Patch(sc.size, cx - spread, cy - spread, cx + spread, cy + spread, margin=0.04)
        blobs = []
        for _ in range(int(r.integers(3, 7))):
            bx, by = cx + r.uniform(-spread, spread), cy + r.uniform(-spread, spread) * 0.8
            blobs.append(ellipse_pts(bx, by, r.uniform(0.018, 0.04), r.uniform(0.015, 0.035), r.uniform(0, 180)))
        p.fill(blobs, 1.0)
        h, w = p.data.shape
        texture = np.clip(0.55 + 0.6 * lowres_noise(r, h, w, max(4, w // 3)), 0.1, 1.2)
        p.data = blur(p.data * texture, 2.5 * sc.size / 256)
        p.data *= lung_crop(sc, p, k) * (0.11 * self.c)
        p.add_to(sc.lesion)
        return p.footprint(0.3)


class Consolidation(Sign):
    """Dense homogeneous lobar/segmental opacity up to a sharp fissure, with air bronchograms."""

    name = "Consolidation"

    def draw(self, sc: Scene):
        r, a = self.rng, sc.anat
        k = _side(r)
        hx, hy = a.hilum(k)
        lobe = ("upper", "lower", "middle")[int(r.integers(3))]
        if lobe == "upper":    # bounded below by the horizontal/oblique fissure at hilar level
            y0, y1, q = a.top[k] + 0.05, hy + r.uniform(-0.01, 0.02), r.uniform(0.3, 0.7)
        elif lobe == "lower":  # posterior basal segments above the diaphragm
            y0, y1, q = hy + 0.03, a.cp[k] - 0.01, r.uniform(0.45, 0.8)
        else:                  # middle lobe / lingula against the heart border
            y0, y1, q = hy + 0.02, a.cp[k] - a.dome_h[k], 0.15
        cy = 0.5 * (y0 + y1)
        cx, _ = sc.lung_point(k, 0.5, q)
        ax, ay = r.uniform(0.07, 0.12), 0.5 * (y1 - y0) * r.uniform(0.9, 1.3)
        p = Patch(sc.size, cx - ax, y0, cx + ax, y1, margin=0.02)
        p.fill(ellipse_pts(cx, cy, ax, ay, r.uniform(-15, 15)), 1.0)
        _, ys = p.grid()
        p.data *= (ys >= y0) & (ys <= y1)
        p.data = blur(p.data, 1.5 * sc.size / 256)
        if lobe == "upper":
            p.data *= ys <= y1  # the fissure gives a sharp lower border
        h, w = p.data.shape
        p.data *= 1.0 + 0.08 * lowres_noise(r, h, w, 6)
        bronchi = Patch(sc.size, cx - ax, y0, cx + ax, y1, margin=0.02)
        direction = np.arctan2(cy - hy, cx - hx)
        bronchi.lines(_bronchograms(r, (0.5 * (cx + hx), 0.5 * (cy + hy)), direction, int(r.integers(3, 6)),
                                    0.6 * max(ax, ay)), 1.0, max(1.0, sc.size / 256))
        bronchi.data = blur(bronchi.data, 0.5 * sc.size / 256)
        p.data = p.data * (0.24 * self.c) - (0.1 * self.c) * bronchi.data * (p.data > 0.5)
        p.data *= lung_crop(sc, p, k)
        p.add_to(sc.lesion)
        return p.footprint(0.3)


class Pneumonia(Sign):
    """A medium-density, ill-defined, mottled confluent patch (mostly mid/lower zone), few air bronchograms."""

    name = "Pneumonia"

    def draw(self, sc: Scene):
        r = self.rng
        k = _side(r)
        cx, cy = sc.lung_point(k, r.uniform(0.4, 0.9), r.uniform(0.25, 0.75))
        rad = r.uniform(0.05, 0.085)
        p = Patch(sc.size, cx - rad, cy - rad, cx + rad, cy + rad, margin=0.04)
        blobs = [ellipse_pts(cx + r.normal(0, 0.35 * rad), cy + r.normal(0, 0.3 * rad), r.uniform(0.35, 0.6) * rad,
                             r.uniform(0.3, 0.55) * rad, r.uniform(0, 180)) for _ in range(int(r.integers(4, 8)))]
        p.fill(blobs, 1.0)
        h, w = p.data.shape
        mottle = np.clip(0.75 + 0.45 * lowres_noise(r, h, w, max(4, w // 5)), 0.3, 1.2)
        p.data = blur(p.data * mottle, 3.5 * sc.size / 256)
        if r.random() < 0.6:
            bronchi = Patch(sc.size, cx - rad, cy - rad, cx + rad, cy + rad, margin=0.04)
            bronchi.lines(_bronchograms(r, (cx, cy), r.uniform(0, 2 * np.pi), int(r.integers(1, 3)), 0.6 * rad),
                          1.0, 1)
            p.data -= 0.25 * blur(bronchi.data, 0.5 * sc.size / 256) * (p.data > 0.5)
        p.data *= lung_crop(sc, p, k) * (0.2 * self.c)
        p.add_to(sc.lesion)
        return p.footprint(0.3)


class Edema(Sign):
    """Bilateral perihilar haze (bat-wing) with Kerley B lines at the lung bases."""

    name = "Edema"

    def draw(self, sc: Scene):
        r, a = self.rng, sc.anat
        p = Patch(sc.size, a.x(0, a.lat[0]), min(a.top), a.x(1, a.lat[1]), max(a.cp), margin=0.01)
        xs, ys = p.grid()
        haze = np.zeros_like(p.data)
        lines = []
        for k in (0, 1):
            hx, hy = a.hilum(k)
            w, h = a.lat[k] - a.med[k], a.height(k)
            cx = hx + 0.2 * w * (1 if k else -1)
            ax, ay = r.uniform(0.45, 0.6) * w, r.uniform(0.28, 0.36) * h
            haze += np.exp(-(((xs - cx) / ax) ** 2 + ((ys - hy) / ay) ** 2) * 1.5)
            for _ in range(int(r.integers(4, 8))):  # Kerley B: short horizontal septal lines at the periphery
                x_end, y = sc.lung_point(k, r.uniform(0.75, 0.97), 1.0)
                length = r.uniform(0.015, 0.03)
                lines.append(np.array([(x_end, y), (x_end - (1 if k else -1) * length, y)]))
        p.data = haze.astype(np.float32) * (0.16 * self.c)
        p.lines(lines, 0.07 * self.c, 1)
        p.data = blur(p.data, 0.8 * sc.size / 256) * lung_crop(sc, p)
        p.add_to(sc.lesion)
        return p.footprint(0.3)


class Fibrosis(Sign):
    """Reticular (net-like) lower-zone, subpleural pattern with small honeycomb cysts."""

    name = "Fibrosis"

    def draw(self, sc: Scene):
        r, a = self.rng, sc.anat
        p = Patch(sc.size, a.x(0, a.lat[0]), min(a.top) + 0.4 * a.height(0), a.x(1, a.lat[1]), max(a.cp),
                  margin=0.01)
        lines = []
        for k in (0, 1):
            for _ in range(int(r.integers(35, 60))):
                x, y = sc.lung_point(k, r.uniform(0.5, 1.0), r.uniform(0.3, 1.0) ** 0.6)
                ang, ln = r.uniform(0, np.pi), r.uniform(0.012, 0.028)
                d = 0.5 * ln * np.array([np.cos(ang), np.sin(ang)])
                lines.append(np.array([(x, y) - d, (x, y) + d]))
            for _ in range(int(r.integers(5, 12))):
                x, y = sc.lung_point(k, r.uniform(0.65, 1.0), r.uniform(0.6, 1.0))
                ring = ellipse_pts(x, y, r.uniform(0.006, 0.011), r.uniform(0.006, 0.011), n=12)
                lines.append(np.vstack([ring, ring[:1]]))
        p.lines(lines, 1.0, max(1.0, sc.size / 300))
        _, ys = p.grid()
        zone = np.clip((ys - p.py0 / sc.size) / 0.12, 0, 1)  # fades in towards the lower zones
        p.data = blur(p.data * zone, 0.5 * sc.size / 256) * (0.11 * self.c) * lung_crop(sc, p)
        p.add_to(sc.lesion)
        return p.footprint(0.25)

