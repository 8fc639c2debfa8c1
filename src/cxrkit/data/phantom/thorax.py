"""The normal chest drawn into a :class:`~cxrkit.data.phantom.scene.Scene`: soft tissue, lungs, mediastinum,
abdomen, bones and lung markings. Small structures are drawn in patches (cheap); full-film work is a few
vectorised numpy operations, so a 256 px film takes about a millisecond."""
from __future__ import annotations

import cv2
import numpy as np

from cxrkit.data.phantom.anatomy import SIGN
from cxrkit.data.phantom.draw import Patch, ellipse_pts, fill_disjoint, fill_poly, lowres_noise, polylines
from cxrkit.data.phantom.scene import Scene


def draw_base(sc: Scene, texture_rng: np.random.Generator) -> None:
    """Body, lungs, mediastinum, abdomen, bones and lung markings into ``soft`` and ``fine``."""
    a, s = sc.anat, sc.size
    # body: an elliptic cross-section per row gives soft-tissue thickness and a soft skin edge; the abdomen
    # below the diaphragm is thicker. Smooth, so drawn at quarter resolution and upsampled (the sharp
    # diaphragm edge comes from the lung masks).
    lo = max(16, s // 4)
    ys = ((np.arange(lo, dtype=np.float32) + 0.5) / lo)[:, None]
    hw = a.body_half_width(ys)
    u = (ys.T - 0.5) / hw
    thick = np.sqrt(np.maximum(1.0 - u * u, 0.0)) * np.clip(hw / a.body_hw, 0.55, 1.0)
    abdomen = np.zeros((lo, lo), np.float32)
    fill_poly(abdomen, _abdomen_pts(sc), 0.07, lo)
    cv2.resize(thick * (0.60 + abdomen), (s, s), dst=sc.soft, interpolation=cv2.INTER_LINEAR)
    lung = sc.lung.astype(np.float32)
    # air removes density; apices darken less (overlying soft tissue and first ribs), bases a little less too
    rel = (sc.ys - min(a.top)) / max(a.base_height(0), 0.2)
    air_profile = a.lung_air * (1.0 - 0.3 * np.exp(-np.clip(rel, 0, None) / 0.12) - 0.12 * np.clip(rel - 0.7, 0, 1))
    sc.soft -= lung * air_profile
    np.add(sc.soft, 0.05, out=sc.soft, where=sc.heart.astype(bool))
    _trachea(sc)
    if a.breast > 0:
        _breasts(sc)
    if a.gastric_bubble is not None:
        _gastric_bubble(sc)
    # bones (the film curve in finish() makes them fainter over the dense heart and abdomen)
    _spine(sc, sc.fine)
    _ribs(sc, sc.fine)
    _clavicles_scapulae(sc, sc.fine)
    vessels = np.zeros((s, s), np.float32)
    _vessels(sc, vessels)
    # parenchymal texture: faint mottling so aerated lung is not flat
    vessels += 0.02 * lowres_noise(texture_rng, s, s, 28)
    vessels *= lung
    if sc.vessel_keep is not None:
        vessels *= sc.vessel_keep
    sc.fine += vessels
    if sc.air_extra is not None:
        sc.soft -= sc.air_extra * lung


def _abdomen_pts(sc: Scene) -> np.ndarray:
    a = sc.anat
    d0, d1 = sc.outlines[0]["diaphragm"], sc.outlines[1]["diaphragm"]
    return np.vstack([[(-0.05, a.cp0[0] + 0.01)], d0, d1[::-1], [(1.05, a.cp0[1] + 0.01), (1.05, 1.05),
                                                               (-0.05, 1.05)]])


def _trachea(sc: Scene) -> None:
    hy = sc.anat.hilum(0)[1]
    carina = (0.5 + 0.004, hy - 0.06)
    p = Patch(sc.size, 0.5 - 0.06, 0.0, 0.5 + 0.07, hy, margin=0.02)
    p.lines([np.array([(0.5 + 0.006, -0.02), carina])], 1.0, sc.px(0.034))
    p.lines([np.array([carina, (0.5 - 0.05, hy - 0.02)]), np.array([carina, (0.5 + 0.06, hy - 0.005)])], 1.0,
            sc.px(0.02))
    p.add_to(sc.soft, -0.08)


def _breasts(sc: Scene) -> None:
    a = sc.anat
    for k in (0, 1):
        cx, cy = float(a.x(k, 0.62 * a.lat[k])), a.cp0[k] - 0.08
        bw, bh = 0.19, 0.12 * a.breast
        t = np.linspace(0, np.pi, 24)
        pts = np.stack([cx + bw * np.cos(t), cy + bh * np.sin(t) - 0.02 * np.sin(t) ** 8], axis=1)
        p = Patch(sc.size, cx - bw, cy - 0.02, cx + bw, cy + bh, margin=0.01)
        p.fill(pts, 0.07 * a.breast)
        p.add_to(sc.soft)


def _gastric_bubble(sc: Scene) -> None:
    a = sc.anat
    rx, ry = a.gastric_bubble
    gx = float(a.x(1, 0.5 * a.lat[1]))
    gy = float(a.diaphragm_y(1, gx)) + ry + 0.012
    t = np.linspace(np.pi, 2 * np.pi, 16)
    dome = np.stack([gx + rx * np.cos(t), gy + ry * np.sin(t)], axis=1)
    pts = np.vstack([dome, [(gx + rx, gy + 0.3 * ry), (gx - rx, gy + 0.3 * ry)]])
    p = Patch(sc.size, gx - rx, gy - ry, gx + rx, gy + ry, margin=0.01)
    p.fill(pts, -0.15)
    p.add_to(sc.soft)


def _spine(sc: Scene, bones: np.ndarray) -> None:
    a = sc.anat
    d = np.abs(sc.xs - 0.5)
    band = np.exp(-(d / 0.034) ** 6) * (1.0 + 0.35 * np.exp(-((d - 0.024) / 0.006) ** 2))
    disc = 1.0 - 0.3 * np.cos(np.pi * (sc.ys - a.top[0]) / (0.036 * a.rib_scale)) ** 16
    bones += (0.045 * band) * disc


def _ribs(sc: Scene, bones: np.ndarray) -> None:
    """Posterior ribs arch from the spine to the chest wall; anterior ribs run down and in, fainter."""
    a = sc.anat
    post, ant = [], []
    t = np.linspace(0, 1, 10)[None, :]
    for k in (0, 1):
        lat_pts = sc.outlines[k]["lateral"]
        order = np.argsort(lat_pts[:, 1])
        reach = np.maximum.accumulate(np.abs(lat_pts[order, 0] - 0.5))
        y0 = a.top[k] - 0.045 + np.arange(11) * (0.105 * a.base_height(k) * a.rib_scale)
        wall = np.interp(y0 + 0.05, lat_pts[order, 1], reach, left=a.med[k] + 0.05)[:, None] + 0.025
        r = 0.025 + (wall - 0.025) * t
        y = y0[:, None] - 0.04 * np.sin(np.pi * t * 0.8) + 0.11 * t**2.2
        post.append(np.stack([a.x(k, r), y], axis=2))
        ye = y[:, -1:]
        bend = np.concatenate([wall, wall - 0.012, wall - 0.05, 0.35 * wall + 0.05], axis=1)
        by = np.concatenate([ye, ye + 0.03, ye + 0.065, ye + 0.16], axis=1)
        ant.append(np.stack([a.x(k, bend), by], axis=2))
    post, ant = np.concatenate(post), np.concatenate(ant)
    # ribbons filled as polygons: much faster than thick polylines; ribs of one group never overlap
    fill_disjoint(bones, _ribbons(ant, _normals(ant), 0.008), 0.03, sc.size)
    rib = np.zeros_like(bones)
    n = _normals(post)
    fill_disjoint(rib, _ribbons(post, n, 0.012), 0.065, sc.size)
    fill_disjoint(rib, _ribbons(post, n, 0.006), 0.045, sc.size)  # marrow: cortical edges read brighter
    bones += rib


def _normals(lines: np.ndarray) -> np.ndarray:
    """Unit normals of (K, N, 2) polylines (central differences, one-sided at the ends)."""
    d = np.empty_like(lines)
    d[:, 1:-1] = lines[:, 2:] - lines[:, :-2]
    d[:, 0], d[:, -1] = lines[:, 1] - lines[:, 0], lines[:, -1] - lines[:, -2]
    n = d[..., ::-1] * np.array([-1.0, 1.0])
    return n / np.maximum(np.sqrt((n * n).sum(-1, keepdims=True)), 1e-9)


def _ribbons(lines: np.ndarray, normals: np.ndarray, half: float) -> np.ndarray:
    """(K, N, 2) centre lines -> (K, 2N, 2) closed outlines ``half`` wide on each side."""
    off = normals * half
    return np.concatenate([lines + off, (lines - off)[:, ::-1]], axis=1)


def _clavicles_scapulae(sc: Scene, bones: np.ndarray) -> None:
    a = sc.anat
    cl, scap = [], []
    for k in (0, 1):
        r = np.array([0.03, 0.10, 0.2, 0.3, 0.38, min(a.lat[k] + 0.08, a.shoulder_hw - 0.015)])
        yy = a.clavicle_y + np.array([0.03, 0.005, -0.015, -0.03, -0.042, -0.045]) * (a.clavicle_tilt / 0.045)
        cl.append(np.stack([a.x(k, r), yy], axis=1))
        # scapula: a lateral triangle; AP films swing its medial border over the lung
        r_med = a.lat[k] + 0.01 - 0.09 * a.scapula_over_lung
        tri = np.array([(r_med, a.top[k] + 0.03), (r_med + 0.025, a.top[k] + 0.36 * a.base_height(k)),
                        (a.lat[k] + 0.1, a.top[k] + 0.04)])
        scap.append(np.stack([a.x(k, tri[:, 0]), tri[:, 1]], axis=1))
    tmp = np.zeros_like(bones)
    fill_disjoint(tmp, scap, 0.03, sc.size)
    polylines(tmp, [p[:2] for p in scap], 0.045, sc.px(0.008), sc.size)
    bones += tmp
    polylines(bones, cl, 0.15, sc.px(0.028), sc.size)


def _vessels(sc: Scene, out: np.ndarray) -> None:
    """Hilar shadows, then the vessel trees (central trunks thick, the rest 1 px before the fine blur)."""
    a = sc.anat
    dens = (0.1, 0.08, 0.06, 0.042)
    thick = (0.011, 0.008, 0, 0)
    for k in (0, 1):
        hx, hy = a.hilum(k)
        fill_poly(out, ellipse_pts(hx + SIGN[k] * 0.01, hy, 0.02, 0.042, SIGN[k] * 15, n=16), 0.08, sc.size)
        scale = np.array([SIGN[k] * (a.lat[k] - a.med[k]), a.base_height(k)])
        for g, segs in enumerate(a.vessels[k]):
            polylines(out, np.array([hx, hy]) + segs * scale, dens[g] * a.vessel_gain[k], sc.px(thick[g]),
                      sc.size)
