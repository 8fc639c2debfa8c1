"""Phantom chest radiographs: procedurally drawn, NIH-shaped films for demos, tests and CI.

Every film is synthetic (no real person); patients, follow-ups, views and label co-occurrence follow aggregate
statistics of the real NIH ChestX-ray14 table shipped in ``stats.json``. The set is written in NIH's own layout
so it goes through the same reader as real NIH data. See docs/phantom.md.

    >>> from cxrkit.data.phantom import generate
    >>> summary = generate("phantom", n=2000, size=256, seed=0, workers=4)   # doctest: +SKIP

Library entry points: :func:`generate` (write a set), :func:`sample_population` + :func:`render_film` (draw in
memory), :func:`render_with_without` (isolate one sign), :class:`Difficulty`.
"""
from __future__ import annotations

from cxrkit.data.phantom.build import GENERATOR_VERSION, PhantomError, PhantomSummary, generate
from cxrkit.data.phantom.difficulty import PRESETS, Difficulty, DifficultyError, resolve_difficulty
from cxrkit.data.phantom.population import DEFAULT_ENRICH, FilmSpec, PopulationError, sample_population
from cxrkit.data.phantom.render import RenderError, render_film, render_with_without
from cxrkit.data.phantom.scene import Film
from cxrkit.data.phantom.stats import PhantomStatsError, build_stats, load_stats

__all__ = [
    "generate", "PhantomSummary", "PhantomError", "GENERATOR_VERSION", "Difficulty", "DifficultyError", "PRESETS",
    "resolve_difficulty", "FilmSpec", "sample_population", "PopulationError", "DEFAULT_ENRICH", "render_film",
    "render_with_without", "RenderError", "Film", "load_stats", "build_stats", "PhantomStatsError",
]
