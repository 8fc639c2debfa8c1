"""Peak RSS and time of the OpenVINO predictor under service-like traffic: every batch size 1..MAX once (a micro-
batching server sees them all), then ROUNDS more passes timed. The memory figure of docs/benchmarks.md ("Memory").

    PYTHONPATH=src python tools/ov_memory.py EXPORTED.onnx [--max-batch 16] [--rounds 2] [--threads 2]

Run it with PYTHONPATH pointing at another checkout's src to measure that code (the before/after figures).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def vm_hwm_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def main() -> None:
    from cxrkit.deploy.openvino_runtime import OpenVinoPredictor

    ap = argparse.ArgumentParser()
    ap.add_argument("onnx")
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    precision = "int8" if args.onnx.endswith(".int8.onnx") else "fp32"
    pred = OpenVinoPredictor(args.onnx, precision=precision, threads=args.threads, max_batch=args.max_batch)
    rng = np.random.default_rng(0)
    films = rng.integers(0, 256, (args.max_batch, pred.preresize, pred.preresize), dtype=np.uint8)
    loaded = vm_hwm_mb()
    for b in range(1, args.max_batch + 1):  # compile whatever this code compiles for these sizes
        pred.predict(films[:b], batch_size=b)
    t = time.perf_counter()
    for _ in range(args.rounds):
        for b in range(1, args.max_batch + 1):
            pred.predict(films[:b], batch_size=b)
    seconds = time.perf_counter() - t
    images = args.rounds * args.max_batch * (args.max_batch + 1) // 2
    print(json.dumps({"compiled_batch_sizes": sorted(pred._requests), "rss_after_load_mb": round(loaded, 1),
                      "rss_peak_mb": round(vm_hwm_mb(), 1), "img_per_s_all_sizes": round(images / seconds, 2),
                      "ms_per_img": round(1000 * seconds / images, 2)}))


if __name__ == "__main__":
    main()
