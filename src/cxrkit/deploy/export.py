"""Export a bundle to ONNX (fp32, optional calibrated static INT8) or TorchScript, with a parity check.

The exported graph takes the normalised float tensor ``B x 1 x size x size`` (``input``, dynamic batch axis) and
returns ``logits`` (B x C), ``embedding`` (B x F pooled backbone features, for the quality gate) and, with a normal
head, ``abnormal_logit`` (B). Geometry, sigmoid and calibration stay in the runtime wrapper
(:class:`cxrkit.deploy.onnx_runtime.OnnxPredictor`), so the parity check compares the *whole* chain - uint8 image in,
calibrated probability out - against the torch predictor and fails loudly above the tolerance.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np

from cxrkit.bundle.calibration import apply_calibration
from cxrkit.data.errors import CxrError
from cxrkit.deploy.onnx_runtime import CONFIG_METADATA_KEY, ONNX_INT8_NAME, ONNX_NAME, OnnxPredictor

FP32_TOLERANCE = 1e-4


class ExportError(CxrError):
    """An export failed or its parity check exceeded the tolerance."""


def _graph_module(model):
    import torch
    from torch import nn

    class GraphOutputs(nn.Module):
        """CXRModel -> (logits, pooled embedding[, abnormal logit][, class maps]) as a tuple, which tracers and ONNX
        need. The class maps (CAM, B x C x h x w) come from the same pass, so a fast runtime explains for free."""

        def __init__(self, inner: nn.Module):
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor):
            from cxrkit.explain.cam import maps_from_outputs

            out = self.inner.forward_all(x)
            res = (out["logits"], out["features"].mean(dim=(2, 3)))
            if out["abnormal_logit"] is not None:
                res = res + (out["abnormal_logit"],)
            if _has_cam(self.inner):
                res = res + (maps_from_outputs(self.inner, out, "cam"),)
            return res

    return GraphOutputs(model).eval()


def _has_cam(model) -> bool:
    from cxrkit.models.heads import CAM_HEADS  # torch: imported where a model is already at hand

    return getattr(model, "head_type", None) in CAM_HEADS


def _output_names(model) -> list[str]:
    return (["logits", "embedding"] + (["abnormal_logit"] if getattr(model, "normal_head", None) is not None else [])
            + (["cam"] if _has_cam(model) else []))


def synthetic_parity_images(size: int, n: int = 8, seed: int = 0) -> np.ndarray:
    """Smooth random uint8 films for a numerical parity check when no real/cache images are given."""
    import cv2

    rng = np.random.default_rng(seed)
    out = np.empty((n, size, size), np.uint8)
    for i in range(n):
        noise = rng.normal(0, 1, (size, size)).astype(np.float32)
        img = cv2.GaussianBlur(noise, (0, 0), sigmaX=max(1.0, size / 16))
        img = (img - img.min()) / (np.ptp(img) + 1e-6)
        out[i] = np.clip(255 * img, 0, 255).astype(np.uint8)
    return out


def cache_images(cache_dir: str | Path, n: int, *, split: str | None = None, seed: int = 0) -> np.ndarray:
    """``n`` uint8 images from a prepared cache (random rows of ``split``, or of the whole cache)."""
    from cxrkit.data.cache import open_cache

    cache = open_cache(cache_dir)
    rows = cache.rows(split) if split else np.arange(len(cache.images))
    if len(rows) == 0:
        raise ExportError(f"cache {cache_dir} has no images{f' in split {split!r}' if split else ''}")
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(rows, size=min(n, len(rows)), replace=False))
    return np.asarray(cache.images[pick])


def _load_torch(bundle_dir: str | Path):
    from cxrkit.bundle import load_bundle

    pred = load_bundle(bundle_dir, device="cpu")
    if not hasattr(pred, "model"):
        raise ExportError(f"{bundle_dir}: ensemble bundles are exported member by member (members/<i>)")
    return pred


def _set_metadata(path: Path, config: dict, extra: dict | None = None) -> None:
    import onnx

    model = onnx.load(str(path))
    props = {p.key: p.value for p in model.metadata_props}
    props[CONFIG_METADATA_KEY] = json.dumps(config)
    props.update(extra or {})
    del model.metadata_props[:]
    for k, v in props.items():
        model.metadata_props.add(key=k, value=v)
    onnx.save(model, str(path))


def max_prob_difference(reference, candidate, images: np.ndarray, batch_size: int = 16) -> float:
    """Largest absolute difference of calibrated probabilities between two predictors on the same images."""
    a = reference.predict(images, batch_size=batch_size)
    b = candidate.predict(images, batch_size=batch_size)
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())


def export_onnx(bundle_dir: str | Path, out: str | Path | None = None, *, parity_images: np.ndarray | None = None,
                tolerance: float = FP32_TOLERANCE, opset: int = 18) -> dict:
    """Export a bundle to fp32 ONNX (default ``BUNDLE/model.onnx``) and check parity with the torch predictor.

    Returns ``{"path", "format", "max_abs_diff", "tolerance", "n_parity_images"}``; raises :class:`ExportError`
    when the probabilities differ by more than ``tolerance``.
    """
    import torch

    pred = _load_torch(bundle_dir)
    out = Path(out) if out else Path(bundle_dir) / ONNX_NAME
    out.parent.mkdir(parents=True, exist_ok=True)
    graph = _graph_module(pred.model)
    example = torch.zeros(2, 1, pred.input_size, pred.input_size)
    tmp = out.with_name(f".{out.name}.tmp")
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    try:
        with torch.inference_mode(False), torch.no_grad():
            torch.onnx.export(graph, (example,), str(tmp), input_names=["input"],
                              output_names=_output_names(pred.model), opset_version=opset, dynamo=True,
                              dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=65536)},),
                              external_data=False, verbose=False, report=False)
    except Exception as exc:  # exporter failures are bugs or unsupported archs; say which bundle and why
        tmp.unlink(missing_ok=True)
        raise ExportError(f"ONNX export of {bundle_dir} ({pred.config['model']['arch']}) failed: {exc}") from exc
    _set_metadata(tmp, pred.config, {"cxrkit_input": "float32 B x 1 x size x size, (pixel/255 - mean) / std"})
    os.replace(tmp, out)
    images = parity_images if parity_images is not None else synthetic_parity_images(pred.preresize)
    diff = max_prob_difference(pred, OnnxPredictor(out, pred.config), images)
    report = {"path": str(out), "format": "onnx", "max_abs_diff": diff, "tolerance": tolerance,
              "n_parity_images": int(len(images))}
    if not diff <= tolerance:
        raise ExportError(f"ONNX parity check failed for {out}: max |p_onnx - p_torch| = {diff:.3g} > {tolerance:g}")
    return report


def quantize_int8(fp32_onnx: str | Path, out: str | Path, calib_images: np.ndarray, *,
                  batch_size: int = 16, per_channel: bool = True) -> Path:
    """Calibrated static INT8 (QDQ, per-channel weights, MinMax activations) of an exported fp32 graph.

    Dynamic quantisation makes conv nets *slower* on CPU (activations are re-quantised per op at run time);
    static QDQ with calibration lets ONNX Runtime fuse conv+requantise into int8 kernels (VNNI/AMX).
    """
    from onnxruntime.quantization import (CalibrationMethod, CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    fp32 = OnnxPredictor(fp32_onnx)
    if len(calib_images) == 0:
        raise ExportError("INT8 calibration needs images (--calib-cache CACHE)")
    x = fp32.model_input(fp32.to_uint8_batch(calib_images))
    batches = [x[i:i + batch_size] for i in range(0, len(x), batch_size)]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.rewind()

        def get_next(self):
            batch = next(self._it, None)
            return None if batch is None else {"input": batch}

        def rewind(self):
            self._it = iter(batches)

    reader = Reader()
    out = Path(out)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        prep = Path(tmp) / "prep.onnx"
        quant_pre_process(str(fp32_onnx), str(prep), skip_symbolic_shape=True)
        tmp_out = Path(tmp) / "int8.onnx"
        quantize_static(str(prep), str(tmp_out), reader, quant_format=QuantFormat.QDQ, per_channel=per_channel,
                        # Conv/Gemm only: quantising DenseNet's BN/ReLU/Concat too adds Q/DQ pairs that cost more
                        # than they save (measured 3.7x slower than conv-only; Concat alone: no gain).
                        op_types_to_quantize=["Conv", "Gemm"], activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax,
                        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
        _set_metadata(tmp_out, fp32.config, {"cxrkit_quantization": "static int8 QDQ per-channel, MinMax"})
        os.replace(tmp_out, out)
    return out


def export_int8(bundle_dir: str | Path, fp32_onnx: str | Path, out: str | Path | None, calib_images: np.ndarray,
                *, parity_images: np.ndarray | None = None) -> dict:
    """Quantise ``fp32_onnx`` to static INT8 (default ``BUNDLE/model.int8.onnx``) and report its deviation from
    the fp32 graph (INT8 is not held to the fp32 tolerance; accuracy is measured with ``cxr bench infer``)."""
    out = Path(out) if out else Path(bundle_dir) / ONNX_INT8_NAME
    quantize_int8(fp32_onnx, out, calib_images)
    fp32 = OnnxPredictor(fp32_onnx)
    images = parity_images if parity_images is not None else calib_images[:16]
    diff = max_prob_difference(fp32, OnnxPredictor(out), images)
    return {"path": str(out), "format": "onnx-int8", "max_abs_diff_vs_fp32": diff,
            "n_calib_images": int(len(calib_images))}


def export_torchscript(bundle_dir: str | Path, out: str | Path, *, parity_images: np.ndarray | None = None,
                       tolerance: float = FP32_TOLERANCE) -> dict:
    """torch.jit.trace of the graph module (same inputs/outputs as the ONNX graph) with a parity check."""
    import torch

    pred = _load_torch(bundle_dir)
    graph = _graph_module(pred.model)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    example = torch.zeros(2, 1, pred.input_size, pred.input_size)
    tmp = out.with_name(f".{out.name}.tmp")
    with torch.no_grad(), warnings.catch_warnings():
        # TorchScript is deprecated upstream but still what C++/mobile deployments load; asked for explicitly.
        warnings.simplefilter("ignore", FutureWarning)
        traced = torch.jit.trace(graph, example, check_trace=True)
        torch.jit.save(traced, str(tmp), _extra_files={"cxrkit_config.json": json.dumps(pred.config)})
        os.replace(tmp, out)
        loaded = torch.jit.load(str(out), map_location="cpu")
    images = parity_images if parity_images is not None else synthetic_parity_images(pred.preresize)
    ref = pred.predict(images)
    with torch.no_grad():
        logits = loaded(pred.model_input(pred.to_uint8_batch(images)))[0].numpy()
    diff = float(np.abs(apply_calibration(logits, pred.config.get("calibration")) - ref).max())
    if not diff <= tolerance:
        raise ExportError(f"TorchScript parity check failed for {out}: max |p_ts - p_torch| = {diff:.3g} > "
                          f"{tolerance:g}")
    return {"path": str(out), "format": "torchscript", "max_abs_diff": diff, "tolerance": tolerance,
            "n_parity_images": int(len(images))}


def export(bundle_dir: str | Path, format: str = "onnx", out: str | Path | None = None, *, int8: bool = False,
           calib_images: np.ndarray | None = None, parity_images: np.ndarray | None = None) -> list[dict]:
    """``cxr export`` as a function: fp32 ONNX [+ static INT8] or TorchScript, each with its parity report."""
    if format == "torchscript":
        if int8:
            raise ExportError("--int8 applies to ONNX only (ONNX Runtime static quantisation)")
        return [export_torchscript(bundle_dir, out or Path(bundle_dir) / "model.ts", parity_images=parity_images)]
    if format != "onnx":
        raise ExportError(f"unknown export format {format!r}; choose 'onnx' or 'torchscript'")
    if int8 and calib_images is None:
        raise ExportError("--int8 needs calibration images: pass --calib-cache CACHE (a `cxr prepare` output)")
    reports = [export_onnx(bundle_dir, out, parity_images=parity_images)]
    if int8:
        fp32 = Path(reports[0]["path"])
        int8_out = fp32.with_name(fp32.stem + ".int8.onnx") if out else None
        reports.append(export_int8(bundle_dir, fp32, int8_out, calib_images, parity_images=parity_images))
    return reports
