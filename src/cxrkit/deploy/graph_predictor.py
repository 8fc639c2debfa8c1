"""The exported-graph predictor base shared by the ONNX Runtime and OpenVINO backends
(:mod:`cxrkit.deploy.onnx_runtime`, :mod:`cxrkit.deploy.openvino_runtime`): reading the config an export embeds,
and preprocessing, sigmoid and calibration around a runtime's ``run``. A module of its own so that the two runtime
modules need not import each other."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from cxrkit.bundle.calibration import apply_calibration
from cxrkit.bundle.base import BasePredictor
from cxrkit.bundle.predictor import abnormality_from_probs
from cxrkit.data.errors import CxrError

CONFIG_METADATA_KEY = "cxrkit_config"


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
        if "cam" in out:  # class maps of the same pass (graphs exported with a CAM-capable head)
            res["cam"] = out["cam"]
        return res
