"""The check behind the box-size map tests: boxes found on maps made at most BOX_SIDE px, scaled to the film, agree
with those found on the film-size maps within a map pixel (4 film pixels), up to a rare threshold-edge case."""
from __future__ import annotations

from typing import Iterable

import numpy as np

from cxrkit.explain.boxes import iou
from cxrkit.explain.finding_boxes import BoxParams, boxes_with


def assert_box_size_maps_agree(pairs_of_maps: Iterable[tuple[np.ndarray, np.ndarray]], film_shape: tuple[int, int],
                               score_tol: float) -> None:
    """``pairs_of_maps``: (film-size map, box-size map) of each finding, tried at thresholds 0.3, 0.5 and 0.7."""
    maps = list(pairs_of_maps)
    diffs, pairs, mismatched = [], 0, 0
    for threshold in (0.3, 0.5, 0.7):
        params = BoxParams(threshold=threshold, min_area_frac=0.001, max_boxes=3)
        for m_full, m_small in maps:
            a, b = boxes_with(m_full, params), boxes_with(m_small, params, film_shape=film_shape)
            mismatched += len(a) != len(b)
            for x, y in zip(a, b):
                pairs += 1
                diffs += [abs(p - q) for p, q in zip(x[:4], y[:4])]
                assert iou(x, y) > 0.8 and abs(x[4] - y[4]) < score_tol
    assert pairs >= 10 and mismatched <= 1
    assert np.mean(np.asarray(diffs) <= 4.01) >= 0.95 and np.median(diffs) <= 1.0
