"""Throughput benchmarks of the data layer: `cxr bench prepare` and `cxr bench loader`.

``bench_prepare`` times :func:`~cxrkit.data.cache.prepare` end to end against the plainest thing that does the
same pixel work - ``cv2.imread`` + ``cv2.resize(INTER_AREA)`` on the same number of processes, nothing written -
so the ratio says what safety (decode checks), resumability and the cache files cost. Both read the files from a
warmed OS page cache.
"""
from __future__ import annotations

import multiprocessing as mp
import tempfile
import time
from pathlib import Path

import numpy as np

from cxrkit.data.cache_work import default_workers, init_decode_process


def _raw_chunk(args: tuple[list[str], int]) -> int:
    import cv2

    paths, size = args
    done = 0
    for p in paths:
        image = cv2.imread(p, cv2.IMREAD_GRAYSCALE)
        if image is not None:
            cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
            done += 1
    return done


def raw_opencv(paths: list[str], size: int, workers: int, chunk: int = 64) -> float:
    """Seconds for cv2.imread + cv2.resize of ``paths`` on ``workers`` processes (pool start included)."""
    tasks = [(paths[i:i + chunk], size) for i in range(0, len(paths), chunk)]
    t0 = time.perf_counter()
    if workers <= 1:
        for t in tasks:
            _raw_chunk(t)
    else:
        with mp.get_context("spawn").Pool(workers, initializer=init_decode_process) as pool:
            for _ in pool.imap_unordered(_raw_chunk, tasks):
                pass
    return time.perf_counter() - t0


def bench_prepare(source, *, size: int = 256, workers: int | None = None, format: str = "auto", repeat: int = 1,
                  tmp_dir: Path | str | None = None, **dataset_kw) -> dict:
    """img/s of ``prepare`` vs a raw OpenCV decode+resize loop on the same files and process count (best of
    ``repeat``); ``ratio`` = prepare / raw (goal >= 0.9)."""
    from cxrkit.data.cache_write import prepare
    from cxrkit.data.datasets import open_dataset

    workers = workers or default_workers()
    dataset = open_dataset(source, format=format, **dataset_kw)
    paths = [str(p) for p in dataset.table["path"]]
    for p in paths:  # warm the page cache so neither contender pays for the first read
        Path(p).read_bytes()
    raw_s, prep_s = [], []
    for _ in range(max(1, repeat)):
        raw_s.append(raw_opencv(paths, size, workers))
        with tempfile.TemporaryDirectory(dir=tmp_dir, prefix="cxr-bench-") as tmp:
            t0 = time.perf_counter()
            cache = prepare(dataset, Path(tmp) / "cache", size=size, workers=workers, progress=False)
            prep_s.append(time.perf_counter() - t0)
            n_cached = len(cache)
            del cache
    n = len(paths)
    return {"source": str(source), "images": n, "cached": n_cached, "size": size, "workers": workers,
            "raw_img_s": n / min(raw_s), "prepare_img_s": n / min(prep_s),
            "ratio": min(raw_s) / min(prep_s), "raw_s": raw_s, "prepare_s": prep_s}


def bench_loader(cache, *, batch_size: int = 256, epochs: int = 3, shuffle: bool = True, device=None,
                 pin_memory: bool | None = None, prefetch: int = 2) -> dict:
    """img/s of iterating :class:`~cxrkit.data.loader.CacheLoader` over every row of ``cache`` (best epoch), on
    one intra-op thread; the first epoch also warms the page cache."""
    import torch

    from cxrkit.data.loader import CacheLoader

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        loader = CacheLoader(cache, None, batch_size, shuffle=shuffle, seed=0, device=device, pin_memory=pin_memory,
                             prefetch=prefetch)
        times = []
        for epoch in range(max(1, epochs)):
            loader.set_epoch(epoch)
            t0 = time.perf_counter()
            n = 0
            for images, _labels, _rows in loader:
                n += images.shape[0]
            if loader.device is not None and loader.device.type == "cuda":
                torch.cuda.synchronize(loader.device)
            times.append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(threads)
    return {"cache": str(cache.path), "images": n, "size": cache.size, "batch_size": batch_size,
            "device": str(loader.device) if loader.device is not None else "cpu", "pin_memory": loader.pin_memory,
            "prefetch": prefetch, "epoch_s": times, "img_s": n / min(times),
            "mb_s": n * cache.size ** 2 / min(times) / 1e6, "median_img_s": n / float(np.median(times))}
