"""Kernel time per operator type of ONNX Runtime on an exported model (batch 1, CPU), e.g. fp32 vs static INT8.

    python tools/profile_onnx.py BUNDLE/model.onnx BUNDLE/model.int8.onnx [--threads 2] [--runs 20]
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import tempfile

import numpy as np
import onnxruntime as ort


def profile(path: str, threads: int, runs: int) -> tuple[float, list[tuple[str, float, int]]]:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    opts.enable_profiling = True
    opts.profile_file_prefix = os.path.join(tempfile.mkdtemp(), "ort")
    session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    shape = [d if isinstance(d, int) else 1 for d in session.get_inputs()[0].shape]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    for _ in range(runs):
        session.run(None, {session.get_inputs()[0].name: x})
    with open(session.end_profiling()) as f:
        events = json.load(f)
    total, count = collections.Counter(), collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            total[e["args"]["op_name"]] += e["dur"]
            count[e["args"]["op_name"]] += 1
    rows = [(op, us / runs / 1000, count[op] // runs) for op, us in total.most_common()]
    return sum(total.values()) / runs / 1000, rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="+")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=20)
    a = ap.parse_args()
    for path in a.models:
        ms, rows = profile(path, a.threads, a.runs)
        print(f"{path}: {ms:.1f} ms kernel time per run")
        for op, t, n in rows[:10]:
            print(f"  {op:<28} {t:6.2f} ms  x{n}")


if __name__ == "__main__":
    main()
