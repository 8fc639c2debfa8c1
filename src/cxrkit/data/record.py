"""The one sample contract every cxrkit dataset yields.

A sample is a plain dict (cheap to collate, easy to print) with exactly these keys:

``image``        numpy uint8 array, H x W, grey (as :func:`cxrkit.data.read_image` returns it)
``labels``       numpy float32 array, one entry per label name: 1 positive, 0 negative, NaN unknown,
                 or a soft value in (0, 1) (CheXpert label smoothing)
``label_names``  tuple of str, the dataset's label vocabulary
``patient_id``   str
``image_id``     str (unique within the dataset)
``meta``         dict with keys: ``age`` (float years or None), ``sex`` ("M", "F" or None),
                 ``view`` ("PA", "AP", "LL", "LATERAL" ... or None), ``pixel_spacing`` ((row_mm, col_mm) at the
                 size of ``image`` or None), ``source`` (str), ``path`` (str), ``boxes`` (list of
                 :data:`Box` dicts in the pixel frame of ``image``; empty when none are known)
"""
from __future__ import annotations

from typing import Any, TypedDict

import numpy as np

META_KEYS = ("age", "sex", "view", "pixel_spacing", "source", "path", "boxes")


class Box(TypedDict):
    label: str
    x: float
    y: float
    w: float
    h: float


class Sample(TypedDict):
    image: np.ndarray
    labels: np.ndarray
    label_names: tuple[str, ...]
    patient_id: str
    image_id: str
    meta: dict[str, Any]


def make_sample(image, labels, label_names, patient_id, image_id, **meta) -> Sample:
    """Build a sample, filling every missing metadata key with None (boxes with [])."""
    unknown = set(meta) - set(META_KEYS)
    if unknown:
        raise ValueError(f"unknown sample metadata keys: {sorted(unknown)}; allowed: {META_KEYS}")
    full = {k: meta.get(k) for k in META_KEYS}
    full["boxes"] = list(meta.get("boxes") or [])
    return Sample(
        image=image,
        labels=np.asarray(labels, dtype=np.float32),
        label_names=tuple(label_names),
        patient_id=str(patient_id),
        image_id=str(image_id),
        meta=full,
    )
