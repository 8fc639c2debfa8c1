"""What the node's processor hands to the result writers (SR, SC) and the worklist: plain data, no DICOM I/O.

One :class:`FilmResult` per processed source instance, one :class:`StudyResult` per processed batch of a study.
The writers (:mod:`~cxrkit.deploy.dicom.sr`, :mod:`~cxrkit.deploy.dicom.sc`) turn these plus the source
datasets into new DICOM objects; nothing here reads or writes files.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np


@dataclass(frozen=True)
class FindingResult:
    """One finding of one film: the model's probability, the call at the bundle's threshold and, for positive
    findings with a heatmap, the boxes around the hot region in *source image pixel* coordinates
    ``(x, y, w, h)`` (column, row of the top-left corner; width, height)."""

    name: str
    probability: float
    threshold: float
    positive: bool
    boxes: tuple[tuple[float, float, float, float], ...] = ()


@dataclass(frozen=True)
class AlgorithmInfo:
    """Algorithm identification for the SR (TID 4019) and the SC's manufacturer fields."""

    name: str            # "cxrkit"
    version: str         # cxrkit version, e.g. "0.1.0"
    model_id: str        # content hash of the bundle, e.g. "sha256:1234abcd..."
    model_version: str   # the bundle's version / creation time
    trained_on_synthetic: bool = False  # a phantom-trained model says so in every object


@dataclass
class FilmResult:
    """The result for one source film.

    ``image``: the decoded uint8 grey film (H x W, as :func:`cxrkit.data.read_image` returns it; same geometry as
    the source's Rows x Columns). ``heatmaps``: finding name -> [0, 1] float map covering the whole film (at most
    256 px, :func:`cxrkit.explain.finding_boxes.box_map_shape`; the pictures scale it), for the positive findings
    (or empty when no heatmap could be made). ``quality_ok``/``quality_reason``: the quality gate.
    """

    sop_instance_uid: str
    sop_class_uid: str
    image: np.ndarray
    findings: list[FindingResult]
    abnormality: float
    quality_ok: bool
    quality_reason: str
    heatmaps: dict[str, np.ndarray] = field(default_factory=dict)
    heatmap_method: Optional[str] = None

    @property
    def positive_findings(self) -> list[FindingResult]:
        return [f for f in self.findings if f.positive]


@dataclass
class StudyResult:
    """Everything the node produced for one batch of a study: the films it read plus the study-level verdict."""

    study_instance_uid: str
    films: list[FilmResult]
    priority: int            # 0 = most urgent (see cxrkit.deploy.dicom.worklist.PRIORITY_RULES)
    priority_reason: str
    abnormality: float       # max over the films
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (hashed SOP UID, reason) of films not read
