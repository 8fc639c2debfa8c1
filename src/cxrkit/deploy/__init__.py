"""Deployment: batch prediction, the input quality gate, ONNX/TorchScript export, runtimes, (REST service).

Public API (imported lazily so ``cxr --help`` stays light): :func:`predict_files`, :func:`expand_inputs`,
:func:`load_predictor`, :class:`OnnxPredictor`, :class:`OpenVinoPredictor`, :class:`QualityGate`,
:func:`fit_quality_gate`, :func:`export`, :func:`export_onnx`, :func:`export_torchscript`, :func:`quantize_int8`.
See docs/deploy.md.
"""
from __future__ import annotations

_LAZY = {
    "predict_files": "cxrkit.deploy.predict",
    "expand_inputs": "cxrkit.deploy.predict",
    "write_results": "cxrkit.deploy.predict",
    "load_predictor": "cxrkit.deploy.onnx_runtime",
    "OnnxPredictor": "cxrkit.deploy.onnx_runtime",
    "OpenVinoPredictor": "cxrkit.deploy.openvino_runtime",
    "QualityGate": "cxrkit.deploy.quality",
    "fit_quality_gate": "cxrkit.deploy.quality",
    "export": "cxrkit.deploy.export",
    "export_onnx": "cxrkit.deploy.export",
    "export_torchscript": "cxrkit.deploy.export",
    "quantize_int8": "cxrkit.deploy.export",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(name)


__all__ = sorted(_LAZY)
