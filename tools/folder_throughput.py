"""img/s of `cxr predict`'s pipeline (predict_files) on a folder of full-size films for one backend, after a
warm-up batch. Run with PYTHONPATH pointing at another checkout's src to measure that code (before/after).

    PYTHONPATH=src python tools/folder_throughput.py BUNDLE FOLDER BACKEND PRECISION [--onnx FILE] [--n 64]
"""
from __future__ import annotations

import argparse
import json
import time


def main() -> None:
    from cxrkit.deploy.onnx_runtime import load_predictor
    from cxrkit.deploy.predict import expand_inputs, predict_files

    ap = argparse.ArgumentParser()
    ap.add_argument("bundle")
    ap.add_argument("folder")
    ap.add_argument("backend")
    ap.add_argument("precision")
    ap.add_argument("--onnx", default=None)
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    files = expand_inputs([args.folder])[:args.n]
    kw = {} if args.backend == "torch" else {"onnx_file": args.onnx, "threads": args.threads}
    pred = load_predictor(args.bundle, args.backend, precision=args.precision, **kw)
    predict_files(pred, files[:args.batch_size], batch_size=args.batch_size)
    t = time.perf_counter()
    rows = predict_files(pred, files, batch_size=args.batch_size)
    dt = time.perf_counter() - t
    print(json.dumps({"img_per_s": round(len(files) / dt, 2), "n": len(files),
                      "errors": sum(r["status"] != "ok" for r in rows)}))


if __name__ == "__main__":
    main()
