"""Phantom patients and films: who is imaged, how often, in which view, with which findings.

Everything is drawn from the shipped NIH statistics (:mod:`cxrkit.data.phantom.stats`) with one
:class:`numpy.random.Generator` seeded from ``(seed, 0)``, so the population is a pure function of
``(n, seed, enrich)``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from cxrkit.data.errors import CxrError
from cxrkit.data.labels import NIH_FINDINGS
from cxrkit.data.phantom.stats import combo_table, enrich_weights, load_stats

# Detector fields of view (mm) of the NIH scanners: pixel spacing x matrix of the common original sizes.
FIELDS_OF_VIEW_MM = (0.143 * 2800, 0.168 * 2500, 0.171 * 2500, 0.139 * 3000)
MAX_PATIENT_SHARE = 0.05  # no patient holds more than 5% of a set, so small sets still split by patient
DEFAULT_ENRICH = 0.05


class PopulationError(CxrError):
    """The requested phantom population is impossible (e.g. no images)."""


@dataclass(frozen=True)
class FilmSpec:
    """One phantom film: its identity, patient, metadata and positive findings.

    ``seed``/``index``/``patient_index`` are all the renderer needs to redraw the same pixels.
    """

    index: int
    patient_index: int
    patient_id: int
    follow_up: int
    age: int
    sex: str
    view: str
    findings: tuple[str, ...]
    fov_mm: float
    seed: int

    @property
    def image_id(self) -> str:
        return f"{self.patient_id:08d}_{self.follow_up:03d}.png"

    @property
    def label_string(self) -> str:
        return "|".join(self.findings) if self.findings else "No Finding"

    def with_findings(self, findings) -> "FilmSpec":
        """The same film (same patient, view, noise) with another set of findings."""
        unknown = [f for f in findings if f not in NIH_FINDINGS]
        if unknown:
            raise PopulationError(f"unknown findings {unknown}; use names from cxrkit.data.NIH_FINDINGS")
        order = {f: i for i, f in enumerate(NIH_FINDINGS)}
        return replace(self, findings=tuple(sorted(set(findings), key=order.__getitem__)))


def sample_population(n: int, seed: int = 0, enrich: float = DEFAULT_ENRICH, stats: dict | None = None
                      ) -> list[FilmSpec]:
    """Draw ``n`` films grouped into patients, following the NIH statistics.

    Args:
        n: number of films (>= 1).
        seed: the set's seed.
        enrich: minimum prevalence per finding (0 = the real NIH label distribution; see
            :func:`~cxrkit.data.phantom.stats.enrich_weights`).
        stats: statistics dict (default: the shipped NIH statistics).
    """
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
        raise PopulationError(f"n={n!r}: a phantom set needs at least 1 image")
    stats = stats or load_stats()
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,)))
    sets, real = combo_table(stats)
    w = enrich_weights(sets, real, enrich)
    cum_sets = np.cumsum(w)

    ipp = np.asarray(stats["images_per_patient"], dtype=np.int64)
    cap = max(1, math.ceil(n * MAX_PATIENT_SHARE))
    ipp = ipp[ipp[:, 0] <= cap]
    ipp_k, ipp_p = ipp[:, 0], ipp[:, 1] / ipp[:, 1].sum()

    bin_w = int(stats["age_bin_years"])
    age_p = {s: np.asarray(h, dtype=np.float64) / np.sum(h) for s, h in stats["age_hist"].items()}
    keep_labels = float(stats.get("followup_label_persistence", 0.0))
    keep_view = float(stats.get("followup_same_view", 0.0))
    age_step = float(stats.get("followup_age_step", 0.0))
    ap_healthy, ap_sick = float(stats["view_ap_no_finding"]), float(stats["view_ap_finding"])

    films: list[FilmSpec] = []
    patient = 0
    while len(films) < n:
        k = int(min(rng.choice(ipp_k, p=ipp_p), n - len(films)))
        sex = "M" if rng.random() < stats["sex_male"] else "F"
        age = int(rng.choice(len(age_p[sex]), p=age_p[sex]) * bin_w + rng.integers(bin_w))
        fov = float(FIELDS_OF_VIEW_MM[rng.integers(len(FIELDS_OF_VIEW_MM))])
        findings: tuple[str, ...] = ()
        view = ""
        for j in range(k):
            # a keep-or-redraw chain keeps the per-film label distribution while follow-ups stay alike
            if j == 0 or rng.random() >= keep_labels:
                findings = sets[int(np.searchsorted(cum_sets, rng.random() * cum_sets[-1], side="right"))]
            if j == 0 or rng.random() >= keep_view:
                view = "AP" if rng.random() < (ap_sick if findings else ap_healthy) else "PA"
            if j:
                age = min(age + int(rng.poisson(age_step)), 99)
            films.append(FilmSpec(index=len(films), patient_index=patient, patient_id=patient + 1, follow_up=j,
                                  age=age, sex=sex, view=view, findings=findings, fov_mm=round(fov, 4), seed=seed))
        patient += 1
    return films
