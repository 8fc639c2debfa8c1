"""One place that decides which runtime runs a bundle when the user did not say (``backend="auto"``).

Order, fastest first on a CPU (docs/benchmarks.md: OpenVINO fp32 < ONNX Runtime fp32 < torch fp32 in latency):
OpenVINO on ``model.onnx`` when the ``openvino`` package is installed, ONNX Runtime on it when ``onnxruntime`` is,
else torch. INT8 is chosen only when the bundle records an INT8 accuracy check within tolerance
(``config["export"]["int8"]["auroc_change"]`` no worse than ``-INT8_TOLERANCE``): a speed-up is never bought
with a silent accuracy loss. CUDA devices always use torch.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from cxrkit.bundle.format import read_bundle_config

INT8_TOLERANCE = 0.005  # mean AUROC change allowed for INT8 (the export goal of docs/deploy.md)


@dataclass(frozen=True)
class RuntimeChoice:
    backend: str
    precision: str
    reason: str


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def int8_accepted(config: dict) -> bool:
    change = ((config.get("export") or {}).get("int8") or {}).get("auroc_change")
    return isinstance(change, (int, float)) and change >= -INT8_TOLERANCE


def choose_runtime(bundle: str | Path, *, device: str = "cpu", backend: str = "auto",
                   precision: str = "auto") -> RuntimeChoice:
    """The backend/precision to load ``bundle`` with; explicit values are kept as given."""
    bundle = Path(bundle)
    if backend != "auto":
        return RuntimeChoice(backend, "fp32" if precision == "auto" else precision, "asked for")
    if device.startswith("cuda") or not bundle.is_dir():
        return RuntimeChoice("torch", "fp32" if precision == "auto" else precision, "CUDA device: torch")
    config = read_bundle_config(bundle)
    has_onnx = (bundle / "model.onnx").is_file()
    if not has_onnx or config.get("ensemble"):
        why = "the bundle has no model.onnx (cxr export writes it)" if not has_onnx else "ensemble bundle"
        return RuntimeChoice("torch", "fp32" if precision == "auto" else precision, f"torch: {why}")
    want_int8 = precision == "int8" or (precision == "auto" and int8_accepted(config)
                                        and (bundle / "model.int8.onnx").is_file())
    prec = "int8" if want_int8 else ("fp32" if precision == "auto" else precision)
    if _has("openvino"):
        return RuntimeChoice("openvino", prec, "fastest installed CPU runtime for the exported graph")
    if _has("onnxruntime") and prec in ("fp32", "int8"):
        return RuntimeChoice("onnx", prec, "ONNX Runtime (OpenVINO not installed)")
    return RuntimeChoice("torch", "fp32", "torch: no ONNX runtime installed")


def load_fastest(bundle: str | Path, *, device: str = "cpu", backend: str = "auto", precision: str = "auto",
                 threads: int | None = None):
    """(predictor, RuntimeChoice): :func:`cxrkit.deploy.onnx_runtime.load_predictor` with :func:`choose_runtime`."""
    from cxrkit.deploy.onnx_runtime import load_predictor

    choice = choose_runtime(bundle, device=device, backend=backend, precision=precision)
    kwargs = {"threads": threads} if choice.backend != "torch" else {}
    return load_predictor(Path(bundle), backend=choice.backend, device=device, precision=choice.precision,
                          **kwargs), choice
