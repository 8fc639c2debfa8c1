"""Explanation cost per image for each map method (docs/explain.md): one finding per image, batch 1, as
`cxr predict`, the REST API and the node explain; medians of 5 interleaved rounds over 10 test films.

    python tools/explain_cost.py BUNDLE CACHE
"""
from __future__ import annotations

import sys
import time

import numpy as np
import torch

from cxrkit.bundle import load_bundle
from cxrkit.data.cache import open_cache
from cxrkit.explain import explain_batch

METHODS = ("cam", "gradcam", "layercam", "cam-layercam")


def main(bundle: str, cache: str) -> None:
    pred, c = load_bundle(bundle), open_cache(cache)
    images = np.asarray(c.images[c.rows("test")[:10]])
    for m in METHODS:  # warm-up: imports, the layer search
        explain_batch(pred, images[:1], [0], m, 1)
    runs: dict[str, list[float]] = {m: [] for m in METHODS}
    for _ in range(5):
        for m in METHODS:
            for i in range(len(images)):
                t = time.perf_counter()
                explain_batch(pred, images[i:i + 1], [i % len(pred.label_names)], m, 1)
                runs[m].append(time.perf_counter() - t)
    med = {m: float(np.median(v)) * 1000 for m, v in runs.items()}
    print(f"torch threads {torch.get_num_threads()}")
    for m, v in med.items():
        print(f"{m}: median {v:.1f} ms/image, {v / med['cam']:.1f} x cam")


if __name__ == "__main__":
    main(*sys.argv[1:3])
