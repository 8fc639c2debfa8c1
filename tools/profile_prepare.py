"""Where `cxr prepare`'s time goes on a machine: disk sync cost, pool start-up, per-image decode, the parent's phases.

    python tools/profile_prepare.py DATASET_DIR [--workers N] [--size 256]

Prints one line per measurement and the parent's cProfile top entries; for comparing machines (docs/benchmarks.md).
"""
from __future__ import annotations

import argparse
import cProfile
import multiprocessing as mp
import os
import pstats
import tempfile
import time
from pathlib import Path

import numpy as np


def _noop(_):
    return 0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("source", type=Path)
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("--size", type=int, default=256)
    a = ap.parse_args()
    from cxrkit.data.cache_work import init_decode_process
    from cxrkit.data.cache_write import prepare
    from cxrkit.data.datasets import open_dataset
    from cxrkit.data.transforms import fit_square

    with tempfile.TemporaryDirectory() as tmp:
        blob = np.random.default_rng(0).integers(0, 256, 256 << 20, dtype=np.uint8).tobytes()
        t = time.perf_counter()
        with open(Path(tmp, "blob"), "wb") as f:
            f.write(blob)
            t_write = time.perf_counter() - t
            os.fsync(f.fileno())
        print(f"disk: 256 MB write {t_write:.2f} s, + fsync {time.perf_counter() - t - t_write:.2f} s")
        t = time.perf_counter()
        for i in range(20):
            with open(Path(tmp, f"m{i}"), "wb") as f:
                f.write(b"x" * 2000)
                f.flush()
                os.fsync(f.fileno())
        print(f"disk: small-file fsync {1000 * (time.perf_counter() - t) / 20:.1f} ms each")

    t = time.perf_counter()
    with mp.get_context("spawn").Pool(a.workers, initializer=init_decode_process) as pool:
        pool.map(_noop, range(a.workers * 4))
    print(f"spawn pool of {a.workers} (init + one task each): {time.perf_counter() - t:.2f} s")

    ds = open_dataset(a.source)
    n = min(64, len(ds))
    t = time.perf_counter()
    imgs = [ds.read(i) for i in range(n)]
    t_read = time.perf_counter() - t
    t = time.perf_counter()
    for im in imgs:
        fit_square(im, a.size)
    print(f"one process: read {1000 * t_read / n:.1f} ms/img, fit_square {1000 * (time.perf_counter() - t) / n:.1f}"
          " ms/img")

    with tempfile.TemporaryDirectory() as tmp:
        prof = cProfile.Profile()
        t = time.perf_counter()
        prof.enable()
        prepare(ds, Path(tmp, "c"), size=a.size, workers=a.workers, progress=False)
        prof.disable()
        print(f"prepare: {len(ds)} images in {time.perf_counter() - t:.2f} s on {a.workers} workers")
        pstats.Stats(prof).sort_stats("cumulative").print_stats(25)


if __name__ == "__main__":
    main()
