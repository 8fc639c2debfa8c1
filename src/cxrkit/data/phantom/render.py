"""Render one phantom film from its :class:`~cxrkit.data.phantom.population.FilmSpec`.

Every random step has its own generator derived with :class:`numpy.random.SeedSequence` from
``(seed, stream, index[, finding])``, so a film's pixels depend only on its spec (not on which worker draws it,
nor on the other films), and adding or removing one finding leaves the patient, pose, noise and the other
findings' random draws untouched: :func:`render_with_without` isolates a sign.
"""
from __future__ import annotations

import numpy as np

from cxrkit.data.errors import CxrError
from cxrkit.data.labels import NIH_FINDINGS
from cxrkit.data.phantom.anatomy import sample_anatomy
from cxrkit.data.phantom.difficulty import Difficulty, resolve_difficulty
from cxrkit.data.phantom.findings import DRAW_ORDER, SIGNS
from cxrkit.data.phantom.population import FilmSpec
from cxrkit.data.phantom.scene import Film, build_scene, finish
from cxrkit.data.phantom.thorax import draw_base

MIN_SIZE, MAX_SIZE = 32, 4096
_PATIENT, _FILM, _SIGN, _TEXTURE, _NOISE = 1, 2, 3, 4, 5  # SeedSequence stream tags (0 is the population)


class RenderError(CxrError):
    """A film cannot be rendered with the given settings."""


def check_size(size) -> int:
    """Validate a film size in pixels."""
    if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or not MIN_SIZE <= size <= MAX_SIZE:
        raise RenderError(f"size={size!r}: phantom films are square, {MIN_SIZE}..{MAX_SIZE} pixels a side "
                          "(256 is the usual training size)")
    return int(size)


def _rng(spec: FilmSpec, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(spec.seed, spawn_key=key))


def render_film(spec: FilmSpec, size: int = 256, difficulty: Difficulty | float | None = None) -> Film:
    """Draw ``spec`` at ``size`` x ``size``: returns the uint8 image, the 0/255 lung mask, one box per positive
    finding (``(x, y, w, h)`` in pixels) and the measured cardiothoracic ratio."""
    size = check_size(size)
    diff = resolve_difficulty(difficulty)
    anat = sample_anatomy(_rng(spec, _PATIENT, spec.patient_index), _rng(spec, _FILM, spec.index), view=spec.view,
                          sex=spec.sex, age=spec.age, difficulty=diff)
    signs = [SIGNS[name](_rng(spec, _SIGN, spec.index, NIH_FINDINGS.index(name)), diff.contrast)
             for name in DRAW_ORDER if name in spec.findings]
    for sign in signs:
        sign.adjust(anat)
    scene = build_scene(anat, size)
    for sign in signs:
        sign.prepare(scene)
    draw_base(scene, _rng(spec, _TEXTURE, spec.index))
    boxes = {}
    for sign in signs:
        box = sign.draw(scene)
        if box is not None:
            boxes[sign.name] = box
    return finish(scene, boxes, _rng(spec, _NOISE, spec.index), diff.noise)


def render_with_without(spec: FilmSpec, finding: str, size: int = 256,
                        difficulty: Difficulty | float | None = None) -> tuple[Film, Film]:
    """The same film drawn with and without ``finding`` (all else equal): ``(with_film, without_film)``.

    Useful to see exactly which pixels a sign changes, and to test that its box covers them.
    """
    if finding not in NIH_FINDINGS:
        raise RenderError(f"unknown finding {finding!r}; use one of {', '.join(NIH_FINDINGS)}")
    with_f = spec.with_findings(set(spec.findings) | {finding})
    without = spec.with_findings(set(spec.findings) - {finding})
    return render_film(with_f, size, difficulty), render_film(without, size, difficulty)
