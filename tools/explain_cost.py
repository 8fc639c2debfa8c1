"""Explanation cost per image for each map method (docs/explain.md): one finding per image, batch 1, as
`cxr predict`, the REST API and the node explain; medians of 5 interleaved rounds over 10 test films.

    python tools/explain_cost.py BUNDLE CACHE [METHODS]      # METHODS: comma-separated, default below
"""
from __future__ import annotations

import sys
import time

import numpy as np
import torch

from cxrkit.bundle import load_bundle
from cxrkit.data.cache import open_cache
from cxrkit.explain import explain_batch

METHODS = ("cam", "gradcam", "layercam", "layercam-x4", "cam-layercam")


def main(bundle: str, cache: str, methods: str = ",".join(METHODS)) -> None:
    pred, c = load_bundle(bundle), open_cache(cache)
    methods = [m for m in methods.split(",") if m]
    images = np.asarray(c.images[c.rows("test")[:10]])
    for m in methods:  # warm-up: imports, the layer search
        explain_batch(pred, images[:1], [0], m, 1)
    runs: dict[str, list[float]] = {m: [] for m in methods}
    for _ in range(5):
        for m in methods:
            for i in range(len(images)):
                t = time.perf_counter()
                explain_batch(pred, images[i:i + 1], [i % len(pred.label_names)], m, 1)
                runs[m].append(time.perf_counter() - t)
    med = {m: float(np.median(v)) * 1000 for m, v in runs.items()}
    print(f"torch threads {torch.get_num_threads()}")
    for m, v in med.items():
        print(f"{m}: median {v:.1f} ms/image, {v / med[methods[0]]:.1f} x {methods[0]}")


if __name__ == "__main__":
    main(*sys.argv[1:4])
