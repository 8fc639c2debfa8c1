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

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from cxrkit.bundle.calibration import apply_calibration
from cxrkit.bundle.format import BundleError, read_bundle_config
from cxrkit.bundle.predictor import BasePredictor, abnormality_from_probs
from cxrkit.data.errors import CxrError

ONNX_NAME = "model.onnx"
ONNX_INT8_NAME = "model.int8.onnx"
CONFIG_METADATA_KEY = "cxrkit_config"
PRECISIONS = ("fp32", "bf16", "fp16")


class BackendError(CxrError):
    """A runtime backend cannot be loaded as asked (missing export, unknown backend/precision, no CUDA...)."""


def read_onnx_config(onnx_path: str | Path) -> dict | None:
    """The bundle config embedded in an exported ONNX file's metadata (None when absent)."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    for prop in model.metadata_props:
        if prop.key == CONFIG_METADATA_KEY:
            return json.loads(prop.value)
    return None


def _require_onnx_config(onnx_path: Path, config: dict | None) -> dict:
    if not onnx_path.is_file():
        raise BackendError(f"{onnx_path}: ONNX file not found (write it with `cxr export BUNDLE --format onnx`)")
    config = config or read_onnx_config(onnx_path)
    if config is None:
        raise BackendError(f"{onnx_path} carries no cxrkit config; pass the bundle directory instead")
    return config


class GraphPredictor(BasePredictor):
    """An exported graph (normalised float in; logits, embedding [, abnormal_logit] out) behind the predictor
    interface: preprocessing, sigmoid and calibration here, the network in :meth:`run` of a runtime subclass."""

    onnx_path: Path

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def model_input(self, batch_u8) -> np.ndarray:
        """The normalised float32 tensor the graph takes (same transform as training: to_model_input)."""
        import torch

        from cxrkit.models.input import to_model_input

        arr = batch_u8.numpy() if isinstance(batch_u8, torch.Tensor) else np.asarray(batch_u8)
        if arr.shape[-1] == arr.shape[-2] == self.input_size:
            # No resize: the same arithmetic in numpy, so torch's OpenMP pool never wakes up to spin against
            # ONNX Runtime's own threads (that contention doubled single-image latency on 2 cores).
            x = arr.astype(np.float32) / np.float32(255.0)
            return ((x - np.float32(self.mean)) / np.float32(self.std)).reshape(len(arr), 1, *arr.shape[-2:])
        return to_model_input(torch.from_numpy(arr), self.input_size, self.mean, self.std).numpy()

    def forward_uint8(self, batch_u8) -> dict[str, np.ndarray]:
        """uint8 B x 1 x P x P -> {"logits", "probs", "abnormality", "embedding"} numpy arrays."""
        out = self.run(self.model_input(batch_u8))
        logits = out["logits"].astype(np.float32)
        probs = apply_calibration(logits, self.config.get("calibration"))
        if "abnormal_logit" in out:
            abnormality = (1.0 / (1.0 + np.exp(-out["abnormal_logit"].astype(np.float64)))).astype(np.float32)
        else:
            abnormality = abnormality_from_probs(probs)
        res = {"logits": logits, "probs": probs, "abnormality": abnormality, "embedding": out["embedding"]}
        if "cam" in out:  # class maps from the same pass (graphs exported by cxrkit >= 0.1 with a CAM head)
            res["cam"] = out["cam"]
        return res


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
