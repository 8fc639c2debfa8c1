"""One predictor interface over torch, ONNX Runtime and OpenVINO.

:class:`OnnxPredictor` (and :class:`cxrkit.deploy.openvino_runtime.OpenVinoPredictor`, which runs the same exported
file) has the same methods as :class:`cxrkit.bundle.Predictor` (``predict``, ``predict_full``,
``forward_uint8``, ``label_names``, ``thresholds``, ``positives``) so batch prediction, the quality gate, the
service and the benchmarks never care which backend runs the network. The ONNX graph (written by
:func:`cxrkit.deploy.export.export_onnx`) takes the *normalised float* tensor at the bundle's input size; the
geometry (``fit_square`` + ``to_model_input``) and sigmoid + calibration run here, exactly as in the torch
predictor, so the export parity check covers the whole chain.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from cxrkit.bundle.format import BundleError, read_bundle_config
from cxrkit.deploy.graph_predictor import (  # noqa: F401 (re-exported: callers import them from here)
    CONFIG_METADATA_KEY, BackendError, GraphPredictor, _require_onnx_config, read_onnx_config,
)

ONNX_NAME = "model.onnx"
ONNX_INT8_NAME = "model.int8.onnx"
PRECISIONS = ("fp32", "bf16", "fp16")


class OnnxPredictor(GraphPredictor):
    """An exported bundle run by ONNX Runtime: uint8 grey images in, calibrated probabilities out."""

    def __init__(self, onnx_path: str | Path, config: dict | None = None, *, providers: Sequence[str] | None = None,
                 threads: int | None = None, path: Path | None = None):
        import onnxruntime as ort

        onnx_path = Path(onnx_path)
        config = _require_onnx_config(onnx_path, config)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            opts.intra_op_num_threads = int(threads)
            opts.inter_op_num_threads = 1
        available = ort.get_available_providers()
        providers = [p for p in (providers or ["CPUExecutionProvider"]) if p in available] or ["CPUExecutionProvider"]
        self.session = ort.InferenceSession(str(onnx_path), opts, providers=providers)
        self.output_names = [o.name for o in self.session.get_outputs()]
        super().__init__(config, path=path)
        self.onnx_path = onnx_path
        self.device = "cuda" if "CUDAExecutionProvider" in self.session.get_providers() else "cpu"

    def runtime(self) -> dict[str, str]:
        precision = "int8" if self.onnx_path.name.endswith(".int8.onnx") else "fp32"
        return {"backend": "onnx", "precision": precision, "device": self.device, "file": self.onnx_path.name}

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Raw graph outputs for a normalised float batch: logits, embedding [, abnormal_logit]."""
        return dict(zip(self.output_names, self.session.run(None, {"input": np.ascontiguousarray(x, np.float32)})))


def _torch_dtype(precision: str):
    import torch

    if precision not in PRECISIONS:
        raise BackendError(f"unknown precision {precision!r}; choose one of {list(PRECISIONS)}")
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def load_predictor(bundle: str | Path, backend: str = "torch", *, device: str = "cpu", precision: str = "fp32",
                   compile: bool = False, channels_last: bool | None = None, onnx_file: str | Path | None = None,
                   threads: int | None = None):
    """Load a bundle for inference on any backend; every result has the :class:`cxrkit.bundle.Predictor` methods.

    ``backend="torch"``: eager (or ``compile=True``: torch.compile of the forward) on ``device`` with autocast at
    ``precision`` (fp32/bf16/fp16); ``channels_last`` defaults to on for CUDA. ``backend="onnx"``: ONNX Runtime
    on ``onnx_file`` (default ``BUNDLE/model.onnx``; ``precision="int8"`` picks ``BUNDLE/model.int8.onnx``),
    CUDA execution provider when ``device="cuda"`` and available. ``backend="openvino"``: the same files run by
    OpenVINO on the CPU (fp32, int8, or bf16 = the fp32 graph computed in bf16 where the CPU supports it).
    """
    bundle = Path(bundle)
    if backend in ("onnx", "openvino"):
        if backend == "openvino" and device.startswith("cuda"):
            raise BackendError("the openvino backend runs on the CPU; use --backend torch or onnx for CUDA")
        from cxrkit.deploy.openvino_runtime import PRECISION_HINTS  # no openvino import until a predictor is built

        allowed = tuple(PRECISION_HINTS) if backend == "openvino" else ("fp32", "int8")
        if precision not in allowed:
            raise BackendError(f"the {backend} backend runs precision {' / '.join(allowed)}; got {precision!r}")
        if onnx_file is None and bundle.suffix == ".onnx":
            onnx_file, config = bundle, None
        else:
            if onnx_file is None:
                onnx_file = bundle / (ONNX_INT8_NAME if precision == "int8" else ONNX_NAME)
            config = read_bundle_config(bundle) if bundle.is_dir() else None
        path = bundle if bundle.is_dir() else None
        if backend == "openvino":
            from cxrkit.deploy.openvino_runtime import OpenVinoPredictor

            return OpenVinoPredictor(onnx_file, config, precision=precision, threads=threads, path=path)
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device.startswith("cuda") else None
        return OnnxPredictor(onnx_file, config, providers=providers, threads=threads, path=path)
    if backend != "torch":
        raise BackendError(f"unknown backend {backend!r}; choose 'torch', 'onnx' or 'openvino'")
    import torch

    from cxrkit.bundle import load_bundle

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BackendError("device 'cuda' asked for but torch sees no CUDA GPU; use --device cpu")
    pred = load_bundle(bundle, device=device, amp_dtype=_torch_dtype(precision))
    if not hasattr(pred, "model"):
        if compile or channels_last:
            raise BundleError(f"{bundle}: compile/channels_last are not supported for ensemble bundles")
        return pred
    if channels_last is None:
        channels_last = device.startswith("cuda")
    if channels_last:
        pred.model = pred.model.to(memory_format=torch.channels_last)
    if compile:
        # forward_all is what the predictor calls; compiling it (not forward) keeps one code path for every output.
        pred.model.forward_all = torch.compile(pred.model.forward_all)
    return pred
