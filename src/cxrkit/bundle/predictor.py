"""The predictor a bundle loads into: uint8 grey images in, per-finding probabilities out."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from cxrkit.bundle.calibration import apply_calibration
from cxrkit.bundle.format import BundleError, read_bundle_config, read_bundle_weights
from cxrkit.data.transforms import fit_square
from cxrkit.models.input import to_model_input


class BasePredictor:
    """What every predictor shares (torch, ONNX Runtime, ensemble): the config, the training geometry, batching.

    Subclasses implement ``forward_uint8(batch) -> {"logits", "probs", "abnormality", ...}``.
    """

    def __init__(self, config: dict, *, path: Path | None = None):
        self.config = config
        self.path = path
        self.label_names: tuple[str, ...] = tuple(config["label_names"])
        self.thresholds = np.array([config["thresholds"][n] for n in self.label_names], dtype=np.float32)
        inp = config["input"]
        self.input_size, self.preresize = int(inp["size"]), int(inp["preresize"])
        self.mean, self.std = float(inp["mean"]), float(inp["std"])

    def runtime(self) -> dict[str, str]:
        """What runs the network: backend, precision, device (``GET /v1/model`` reports it)."""
        amp = getattr(self, "amp_dtype", None)
        precision = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(amp, "fp32")
        return {"backend": "torch", "precision": precision, "device": str(getattr(self, "device", "cpu"))}

    def to_uint8_batch(self, images: Sequence[np.ndarray] | np.ndarray) -> torch.Tensor:
        """Bring images to the stored (preresize) geometry: B x 1 x P x P uint8."""
        out = np.empty((len(images), self.preresize, self.preresize), dtype=np.uint8)
        for i, img in enumerate(images):
            img = np.asarray(img)
            if img.dtype != np.uint8 or img.ndim != 2:
                raise ValueError(f"image {i}: expected a uint8 H x W grey array, got {img.dtype} {img.shape}")
            out[i] = img if img.shape == (self.preresize,) * 2 else fit_square(img, self.preresize)[0]
        return torch.from_numpy(out).unsqueeze(1)

    def forward_uint8(self, batch_u8: torch.Tensor) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def predict(self, images: Sequence[np.ndarray] | np.ndarray, batch_size: int = 32) -> np.ndarray:
        """N x C probabilities for uint8 grey images."""
        return self.predict_full(images, batch_size)["probs"]

    def predict_full(self, images, batch_size: int = 32) -> dict[str, np.ndarray]:
        """All outputs of :meth:`forward_uint8` for uint8 grey images, in batches."""
        parts = [self.forward_uint8(self.to_uint8_batch(images[i:i + batch_size]))
                 for i in range(0, len(images), batch_size)]
        if not parts:
            c = len(self.label_names)
            return {"logits": np.zeros((0, c), np.float32), "probs": np.zeros((0, c), np.float32),
                    "abnormality": np.zeros(0, np.float32)}
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def positives(self, probs: np.ndarray) -> np.ndarray:
        return probs >= self.thresholds


class Predictor(BasePredictor):
    """A loaded bundle. ``predict(images)`` takes uint8 grey arrays as :func:`cxrkit.data.read_image` returns them
    (any size: each is brought to the training geometry with ``fit_square``) and returns N x C probabilities."""

    def __init__(self, model: torch.nn.Module, config: dict, *, device: str | torch.device = "cpu",
                 path: Path | None = None, amp_dtype: torch.dtype | None = None):
        super().__init__(config, path=path)
        self.model = model.eval().to(device)
        self.device = torch.device(device)
        self.amp_dtype = amp_dtype

    def model_input(self, batch_u8: torch.Tensor) -> torch.Tensor:
        return to_model_input(batch_u8.to(self.device, non_blocking=True), self.input_size, self.mean, self.std)

    @torch.inference_mode()
    def forward_uint8(self, batch_u8: torch.Tensor) -> dict[str, np.ndarray]:
        """uint8 B x 1 x P x P -> {"logits", "probs", "abnormality"} numpy arrays (cache fast path)."""
        x = self.model_input(batch_u8)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            out = self.model.forward_all(x)
        logits = out["logits"].float().cpu().numpy()
        probs = apply_calibration(logits, self.config.get("calibration"))
        if out.get("abnormal_logit") is not None:
            abnormality = torch.sigmoid(out["abnormal_logit"].float()).cpu().numpy()
        else:
            abnormality = abnormality_from_probs(probs)
        return {"logits": logits, "probs": probs, "abnormality": abnormality}


def abnormality_from_probs(probs: np.ndarray) -> np.ndarray:
    """Abnormality score without a dedicated head: the largest per-finding probability (a film is abnormal when
    any finding is present; max keeps the score on the findings' own probability scale)."""
    return probs.max(axis=1) if probs.shape[1] else np.zeros(len(probs), np.float32)


def load_bundle(path: str | Path, device: str | torch.device = "cpu", amp_dtype: torch.dtype | None = None):
    """Load a bundle directory in any fresh process; returns a :class:`Predictor` (or an ensemble predictor)."""
    path = Path(path)
    config = read_bundle_config(path)
    if config.get("ensemble"):
        from cxrkit.bundle.ensemble import load_ensemble

        return load_ensemble(path, config, device=device, amp_dtype=amp_dtype)
    from cxrkit.models import create_model

    spec = dict(config["model"])
    arch, num_classes = spec.pop("arch"), spec.pop("num_classes")
    model = create_model(arch, num_classes, **spec)
    try:
        model.load_state_dict(read_bundle_weights(path))
    except RuntimeError as exc:
        raise BundleError(f"{path}: weights do not match the architecture in config.json: {exc}") from exc
    return Predictor(model, config, device=device, path=path, amp_dtype=amp_dtype)
