"""Does an input film look like what the model was trained on? Wrong input normalisation is the most common
cause of wrong results with chest X-ray models, so the predictor says when a film's polarity or used intensity
range disagrees with its bundle's ``input`` record (docs/imports.md, "Input normalisation").

Thresholds (measured on 400 real NIH films, tests/fixtures and /work/shared/data): the mediastinum-minus-lungs
contrast of normal films has its 1st percentile at -0.054 and minimum -0.144, inverted films mirror that, so
< -0.1 flags ~0.5 % of correct films and most inverted ones; the 1-99 % pixel range of those films is >= 121
grey levels, so < 64 means a film that uses a quarter of 0..255 (a 12/16-bit image cut to 8 bits without its
window, or a nearly blank one).
"""
from __future__ import annotations

import numpy as np

from cxrkit.data.intensity import inversion_contrast, used_range
from cxrkit.data.transforms import fit_square

INVERTED_BELOW = -0.1
MIN_RANGE = 64.0


def input_warning(image: np.ndarray, expected: dict) -> str:
    """'' when the uint8 grey film fits the bundle's ``input`` record, else one sentence saying what is off."""
    lo, hi = used_range(image)
    problems = []
    if hi - lo < MIN_RANGE:
        problems.append(f"pixel values use only {lo:.0f}..{hi:.0f} of 0..255 (the model's films use most of it): "
                        "a 12/16-bit film scaled to 8 bits without its window? decode with cxrkit.data.read_image")
    polarity = expected.get("polarity", "MONOCHROME2")
    contrast = inversion_contrast(fit_square(image, 128)[0])
    if polarity == "MONOCHROME2" and contrast < INVERTED_BELOW:
        problems.append(f"the film looks inverted (mediastinum darker than the lungs, contrast {contrast:.2f}) but "
                        "the model expects bright bone (MONOCHROME2): a MONOCHROME1 film read without inversion?")
    return "; ".join(problems)
