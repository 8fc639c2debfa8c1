"""What every predictor shares (torch, ONNX Runtime, OpenVINO, ensemble). A module of its own so that the ensemble
and the torch predictor (whose ``load_bundle`` loads ensembles too) need not import each other."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from cxrkit.data.transforms import fit_square

log = logging.getLogger(__name__)


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

    def predict_full(self, images, batch_size: int = 32, input_warnings=None) -> dict[str, np.ndarray]:
        """All outputs of :meth:`forward_uint8` for uint8 grey images, in batches, plus ``input_warning`` (one
        string per image, '' when its polarity and intensity range fit the bundle's ``input`` record).
        ``input_warnings``: already checked per image (e.g. by decode workers on the original films), so the
        images here may be the fitted squares."""
        parts = [self.forward_uint8(self.to_uint8_batch(images[i:i + batch_size]))
                 for i in range(0, len(images), batch_size)]
        if not parts:
            c = len(self.label_names)
            return {"logits": np.zeros((0, c), np.float32), "probs": np.zeros((0, c), np.float32),
                    "abnormality": np.zeros(0, np.float32), "input_warning": np.zeros(0, dtype=object)}
        out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        out["input_warning"] = (self.input_warnings(images) if input_warnings is None
                                else log_input_warnings(np.array(input_warnings, dtype=object)))
        return out

    def input_warnings(self, images) -> np.ndarray:
        """Per image, why it does not look like the films the model was trained on ('' when it does); logged."""
        from cxrkit.bundle.input_check import input_warning

        return log_input_warnings(np.array([input_warning(np.asarray(im), self.config["input"]) for im in images],
                                           dtype=object))

    def positives(self, probs: np.ndarray) -> np.ndarray:
        return probs >= self.thresholds


def log_input_warnings(warnings: np.ndarray) -> np.ndarray:
    """One log line for a batch's input warnings (the count and the first one); returns ``warnings``."""
    flagged = [i for i, w in enumerate(warnings) if w]
    if flagged:
        log.warning("%d of %d input films do not match the model's input record: image %d: %s", len(flagged),
                    len(warnings), flagged[0], warnings[flagged[0]])
    return warnings


def abnormality_from_probs(probs: np.ndarray) -> np.ndarray:
    """Abnormality score without a dedicated head: the largest per-finding probability (a film is abnormal when
    any finding is present; max keeps the score on the findings' own probability scale)."""
    return probs.max(axis=1) if probs.shape[1] else np.zeros(len(probs), np.float32)
