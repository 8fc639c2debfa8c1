"""The export ``cxr train`` runs at its end: what the fast CPU runtimes need, with INT8's accuracy measured.

Writes ``BUNDLE/model.onnx`` (fp32, parity-checked against torch on validation films), ``BUNDLE/model.int8.onnx``
(static INT8 calibrated on training films) and records in the bundle config, under ``export``, the INT8 graph's
mean AUROC change and largest probability change against the fp32 graph on (up to ``VAL_MAX`` films of) the
validation split, run by the runtime that would run it (OpenVINO when installed, else ONNX Runtime).
:func:`cxrkit.deploy.runtime.choose_runtime` takes INT8 only when that change is within tolerance.
"""
from __future__ import annotations

import importlib.util
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

CALIB_N = 128    # calibration films from the training split (MinMax settles well before this)
VAL_MAX = 2000   # validation films scored fp32 vs INT8; more only costs time
EXPORT_MODULES = ("onnx", "onnxruntime", "onnxscript")


def missing_modules() -> list[str]:
    return [m for m in EXPORT_MODULES if importlib.util.find_spec(m) is None]


def _sample(rows: np.ndarray, n: int, seed: int) -> np.ndarray:
    if len(rows) <= n:
        return np.asarray(rows)
    return np.sort(np.random.default_rng(seed).choice(rows, n, replace=False))


def _scores(predictor, cache, rows: np.ndarray, batch_size: int = 32) -> np.ndarray:
    out = [predictor.predict_full(np.asarray(cache.images[rows[i:i + batch_size]]), batch_size=batch_size)["probs"]
           for i in range(0, len(rows), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, len(predictor.label_names)), np.float32)


def _mean_auroc(labels: np.ndarray, probs: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    aucs = []
    for c in range(labels.shape[1]):
        known = ~np.isnan(labels[:, c])
        if len(np.unique(labels[known, c])) == 2:
            aucs.append(roc_auc_score(labels[known, c], probs[known, c]))
    return float(np.mean(aucs)) if aucs else float("nan")


def export_bundle(bundle_dir: str | Path, cache, *, train_split: str = "train", val_split: str = "val",
                  seed: int = 0, calib_n: int = CALIB_N, val_max: int = VAL_MAX) -> dict[str, Any]:
    """Export ``bundle_dir`` to fp32 + INT8 ONNX and record the INT8 accuracy check; returns the record."""
    from cxrkit.bundle.format import read_bundle_config, write_bundle_config
    from cxrkit.deploy.export import export_onnx, quantize_int8
    from cxrkit.deploy.onnx_runtime import ONNX_INT8_NAME, ONNX_NAME, load_predictor

    bundle_dir = Path(bundle_dir)
    t0 = time.perf_counter()
    val_rows = _sample(cache.rows(val_split), val_max, seed)
    calib_rows = _sample(cache.rows(train_split), calib_n, seed)
    if len(calib_rows) == 0:
        calib_rows = val_rows[:calib_n]
    parity = np.asarray(cache.images[val_rows[:8]]) if len(val_rows) else None
    onnx_report = export_onnx(bundle_dir, parity_images=parity)
    quantize_int8(bundle_dir / ONNX_NAME, bundle_dir / ONNX_INT8_NAME, np.asarray(cache.images[calib_rows]))
    backend = "openvino" if importlib.util.find_spec("openvino") is not None else "onnx"
    record: dict[str, Any] = {
        "onnx": {"file": ONNX_NAME, "max_abs_diff_vs_torch": onnx_report["max_abs_diff"],
                 "tolerance": onnx_report["tolerance"]},
        "int8": {"file": ONNX_INT8_NAME, "split": val_split, "n_images": int(len(val_rows)),
                 "n_calib_images": int(len(calib_rows)), "calibration_split": train_split, "runtime": backend},
    }
    if len(val_rows):
        fp32 = _scores(load_predictor(bundle_dir, backend, precision="fp32"), cache, val_rows)
        int8 = _scores(load_predictor(bundle_dir, backend, precision="int8"), cache, val_rows)
        labels = cache.labels(val_rows)
        a32, a8 = _mean_auroc(labels, fp32), _mean_auroc(labels, int8)
        record["int8"].update({"auroc_fp32": a32, "auroc_int8": a8,
                               "max_prob_change": float(np.abs(fp32.astype(np.float64) - int8).max())})
        if math.isfinite(a32) and math.isfinite(a8):
            record["int8"]["auroc_change"] = a8 - a32
        else:
            record["int8"]["note"] = "mean AUROC not measurable on this validation split (a class lacks both labels)"
    record["seconds"] = round(time.perf_counter() - t0, 2)
    config = read_bundle_config(bundle_dir)
    config["export"] = record
    write_bundle_config(bundle_dir, config)
    return record


def export_after_training(bundle_dir: str | Path, cache, *, train_split: str, val_split: str, seed: int) -> str:
    """:func:`export_bundle` for ``cxr train``: a line to show; missing export packages or a failed export are
    reported (the torch bundle stands on its own), never fatal."""
    from cxrkit.data.errors import CxrError
    from cxrkit.deploy.runtime import INT8_TOLERANCE

    missing = missing_modules()
    if missing:
        return (f"no ONNX export ({', '.join(missing)} not installed: pip install 'cxrkit[export,openvino]'); the bundle runs "
                "on torch")
    try:
        rec = export_bundle(bundle_dir, cache, train_split=train_split, val_split=val_split, seed=seed)
    except (CxrError, RuntimeError, ValueError) as exc:
        return f"ONNX export failed ({exc}); the bundle runs on torch; retry with `cxr export {bundle_dir} --int8`"
    int8 = rec["int8"]
    change = int8.get("auroc_change")
    if change is None:
        verdict = "INT8 not used by default: " + int8.get("note", "no validation films")
    else:
        used = "used by default" if change >= -INT8_TOLERANCE else f"NOT used (tolerance -{INT8_TOLERANCE:g})"
        verdict = (f"INT8 mean AUROC change {change:+.4f} on {int8['n_images']} {int8['split']} films "
                   f"({int8['runtime']}): {used}")
    return f"exported model.onnx + model.int8.onnx in {rec['seconds']:.1f} s; {verdict}; --no-export skips this"
