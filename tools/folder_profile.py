"""Where `cxr predict`'s folder time goes, for one bundle and one backend (a profile, not a benchmark: see
docs/benchmarks.md, "Where the folder time goes").

    python tools/folder_profile.py BUNDLE FOLDER [--backend openvino] [--batch 16] [--threads 2]
"""
import argparse
import time
from pathlib import Path

import numpy as np

from cxrkit.data.transforms import fit_square
from cxrkit.deploy.bench_cpu import batch_ceiling
from cxrkit.deploy.onnx_runtime import load_predictor
from cxrkit.deploy.predict import _decode_and_prepare, _safe_decode, expand_inputs, predict_files


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("bundle")
    ap.add_argument("folder")
    ap.add_argument("--backend", default="openvino")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    paths = expand_inputs([a.folder])
    pred = load_predictor(a.bundle, a.backend, precision="fp32", threads=a.threads,
                          **({} if a.backend == "torch" else {"onnx_file": str(Path(a.bundle) / "model.onnx")}))
    n = min(24, len(paths))
    for p in paths[:2]:  # the first decodes import the decoders (pydicom...): not per-film time
        _decode_and_prepare(p, pred, None)
    t = time.perf_counter()
    for p in paths[:n]:
        _safe_decode(p)
    print(f"decode {1000 * (time.perf_counter() - t) / n:.1f} ms/film")
    t = time.perf_counter()
    for p in paths[:n]:
        _decode_and_prepare(p, pred, None)
    print(f"decode + prepare {1000 * (time.perf_counter() - t) / n:.1f} ms/film")
    # every film, so that the batches are full
    ceiling = batch_ceiling(pred, np.stack([fit_square(_safe_decode(p)[0], pred.preresize)[0] for p in paths]),
                            a.batch)
    print(f"ceiling {ceiling:.1f} img/s")
    for boxes in (True, False):
        predict_files(pred, paths[:a.batch], batch_size=a.batch, boxes=boxes, progress=False)
        t = time.perf_counter()
        rows = predict_files(pred, paths, batch_size=a.batch, boxes=boxes, progress=False)
        rate = len(paths) / (time.perf_counter() - t)
        print(f"boxes={boxes}: folder {rate:.1f} img/s = {rate / ceiling:.2f}x ceiling, "
              f"{sum(len(r.get('findings', [])) for r in rows)} positive findings")


if __name__ == "__main__":
    main()
