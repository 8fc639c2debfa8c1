"""One place that decides which runtime runs a bundle when the user did not say (``backend="auto"``).

Order, fastest first on a CPU (docs/benchmarks.md: OpenVINO INT8 < OpenVINO fp32 < ONNX Runtime fp32 < torch fp32
in latency): OpenVINO on the bundle's exported graph when the ``openvino`` package is installed, ONNX Runtime on
it when ``onnxruntime`` is, else torch. The INT8 graph is chosen only when the bundle records its accuracy check
(``config["export"]["int8"]``, written by ``cxr train``'s automatic export or ``cxr export --int8
--calib-cache``) and the mean AUROC change on the validation split is no worse than ``-INT8_TOLERANCE``: a
speed-up is never bought with a silent accuracy loss. CUDA devices, ensembles and heatmaps use torch.
Every choice carries its reason and the recorded accuracy change, shown in outputs (:meth:`RuntimeChoice.describe`).
"""
from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cxrkit.bundle.format import read_bundle_config
from cxrkit.deploy.onnx_runtime import ONNX_INT8_NAME, ONNX_NAME

log = logging.getLogger("cxrkit.runtime")
INT8_TOLERANCE = 0.005  # mean AUROC drop allowed for INT8 on the validation split (docs/deploy.md)


@dataclass(frozen=True)
class RuntimeChoice:
    backend: str
    precision: str
    reason: str
    asked: bool = False                      # the user named the backend (no automatic choice)
    int8_check: dict[str, Any] | None = field(default=None, compare=False)  # the bundle's recorded INT8 check

    def describe(self) -> dict[str, Any]:
        """What outputs show: backend, precision, how it was chosen and the measured accuracy change of INT8."""
        check = self.int8_check or {}
        change = {k: check.get(k) for k in ("auroc_change", "max_prob_change", "split", "n_images") if k in check}
        return {"backend": self.backend, "precision": self.precision, "chosen": "asked" if self.asked else "auto",
                "reason": self.reason, "int8_tolerance": INT8_TOLERANCE,
                "accuracy_change": change if self.precision == "int8" else None,
                "int8_check": change or None}

    def label(self) -> str:
        """One line: ``openvino-int8 (auto: ...; mean AUROC change -0.0003 on val)``."""
        extra = ""
        if self.precision == "int8" and (self.int8_check or {}).get("auroc_change") is not None \
                and "AUROC change" not in self.reason:
            extra = f"; mean AUROC change {self.int8_check['auroc_change']:+.4f} on {self.int8_check.get('split')}"
        how = "asked for" if self.asked else "auto"
        why = "" if self.reason == "asked for" else f": {self.reason}"
        return f"{self.backend}-{self.precision} ({how}{why}{extra})"


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def int8_check(config: dict) -> dict | None:
    check = (config.get("export") or {}).get("int8")
    return check if isinstance(check, dict) else None


def int8_accepted(config: dict) -> bool:
    change = (int8_check(config) or {}).get("auroc_change")
    return isinstance(change, (int, float)) and change >= -INT8_TOLERANCE


def _int8_verdict(config: dict, has_file: bool) -> tuple[bool, str]:
    check = int8_check(config)
    if not has_file:
        return False, f"no {ONNX_INT8_NAME}"
    change = (check or {}).get("auroc_change")
    if not isinstance(change, (int, float)):
        return False, "INT8 graph present but its accuracy was never measured on validation (fp32 used)"
    if change < -INT8_TOLERANCE:
        return False, (f"INT8 rejected: its recorded mean AUROC change {change:+.4f} exceeds the tolerance "
                       f"-{INT8_TOLERANCE:g}")
    return True, f"INT8 within tolerance (mean AUROC change {change:+.4f} >= -{INT8_TOLERANCE:g})"


def choose_runtime(bundle: str | Path, *, device: str = "cpu", backend: str = "auto",
                   precision: str = "auto", heatmaps: bool = False) -> RuntimeChoice:
    """The backend/precision to load ``bundle`` with; explicit values are kept as given (``precision="auto"``
    with an explicit onnx/openvino backend still takes INT8 only when it passed the check)."""
    bundle = Path(bundle)
    is_file = bundle.suffix == ".onnx" and bundle.is_file()
    config = read_bundle_config(bundle) if bundle.is_dir() else {}
    check = int8_check(config)
    if backend not in ("auto", "torch", "onnx", "openvino"):
        return RuntimeChoice(backend, precision, "asked for", True, check)  # load_predictor says what is wrong
    if backend != "auto":
        if precision != "auto":
            return RuntimeChoice(backend, precision, "asked for", True, check)
        if backend == "torch":
            return RuntimeChoice("torch", "fp32", "asked for", True, check)
        if is_file:
            return RuntimeChoice(backend, "int8" if bundle.name.endswith(".int8.onnx") else "fp32", "asked for",
                                 True, check)
        ok, why = _int8_verdict(config, (bundle / ONNX_INT8_NAME).is_file())
        return RuntimeChoice(backend, "int8" if ok else "fp32", f"precision auto: {why}", True, check)
    torch_prec = "fp32" if precision == "auto" else precision
    if device.startswith("cuda"):
        return RuntimeChoice("torch", torch_prec, "CUDA device: torch", False, check)
    if heatmaps:
        return RuntimeChoice("torch", torch_prec, "heatmaps need the torch model", False, check)
    if is_file:
        prec = "int8" if bundle.name.endswith(".int8.onnx") else "fp32"
        if _has("openvino"):
            return RuntimeChoice("openvino", prec, "exported graph given; OpenVINO is the fastest installed", False)
        return RuntimeChoice("onnx", prec, "exported graph given; OpenVINO not installed", False)
    if not bundle.is_dir():
        return RuntimeChoice("torch", torch_prec, "not a bundle directory", False)
    has_onnx = (bundle / ONNX_NAME).is_file()
    if not has_onnx or config.get("ensemble"):
        why = f"the bundle has no {ONNX_NAME} (`cxr export` writes it)" if not has_onnx else "ensemble bundle"
        return RuntimeChoice("torch", torch_prec, why, False, check)
    if precision == "auto":
        ok, why = _int8_verdict(config, (bundle / ONNX_INT8_NAME).is_file())
        prec = "int8" if ok else "fp32"
    elif precision == "int8":
        prec, why = "int8", f"INT8 asked for ({_int8_verdict(config, True)[1]})"
    else:
        prec, why = precision, f"precision {precision} asked for"
    if _has("openvino"):
        return RuntimeChoice("openvino", prec, f"OpenVINO: fastest installed CPU runtime; {why}", False, check)
    if _has("onnxruntime") and prec in ("fp32", "int8"):
        return RuntimeChoice("onnx", prec, f"ONNX Runtime (OpenVINO not installed); {why}", False, check)
    return RuntimeChoice("torch", torch_prec, "no ONNX runtime installed (pip install 'cxrkit[openvino]')", False,
                         check)


def load_fastest(bundle: str | Path, *, device: str = "cpu", backend: str = "auto", precision: str = "auto",
                 threads: int | None = None, heatmaps: bool = False):
    """(predictor, RuntimeChoice): :func:`cxrkit.deploy.onnx_runtime.load_predictor` with :func:`choose_runtime`.

    The choice is logged and kept on the predictor as ``runtime_choice`` (a :meth:`RuntimeChoice.describe`
    dict), which prediction files and the service report."""
    from cxrkit.deploy.onnx_runtime import load_predictor

    choice = choose_runtime(bundle, device=device, backend=backend, precision=precision, heatmaps=heatmaps)
    kwargs = {"threads": threads} if choice.backend != "torch" else {}
    predictor = load_predictor(Path(bundle), backend=choice.backend, device=device, precision=choice.precision,
                               **kwargs)
    predictor.runtime_choice = choice.describe()
    log.info("runtime: %s", choice.label())
    return predictor, choice


def runtime_metadata(predictor) -> dict[str, Any]:
    """What a result file or response says about the runtime: the predictor's ``runtime()`` plus the choice
    (how it was made, the INT8 accuracy change) when the predictor was loaded by :func:`load_fastest`."""
    out: dict[str, Any] = dict(predictor.runtime())
    choice = getattr(predictor, "runtime_choice", None)
    if choice:
        out.update({k: choice[k] for k in ("chosen", "reason", "accuracy_change")})
    elif out.get("precision") == "int8":
        check = int8_check(predictor.config) or {}
        out["accuracy_change"] = {k: check[k] for k in ("auroc_change", "max_prob_change", "split") if k in check}
    return out
