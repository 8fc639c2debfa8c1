"""The predictor a bundle loads into: uint8 grey images in, per-finding probabilities out."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cxrkit.bundle.base import BasePredictor, abnormality_from_probs  # noqa: F401 - re-exported
from cxrkit.bundle.calibration import apply_calibration
from cxrkit.bundle.format import BundleError, read_bundle_config, read_bundle_weights
from cxrkit.models.heads import PATCH_LOGIT_HEADS
from cxrkit.models.input import to_model_input


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
        """uint8 B x 1 x P x P -> {"logits", "probs", "abnormality"} numpy arrays (cache fast path), plus "cam"
        (B x C x h x w class maps of the same pass) for a patch-logit head, as an exported graph gives them: boxes
        then need no second forward (that pass cost 160 CPU ms a film with DenseNet-121 on 2 cores)."""
        x = self.model_input(batch_u8)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            out = self.model.forward_all(x)
        logits = out["logits"].float().cpu().numpy()
        probs = apply_calibration(logits, self.config.get("calibration"))
        if out.get("abnormal_logit") is not None:
            abnormality = torch.sigmoid(out["abnormal_logit"].float()).cpu().numpy()
        else:
            abnormality = abnormality_from_probs(probs)
        res = {"logits": logits, "probs": probs, "abnormality": abnormality}
        if getattr(self.model, "head_type", None) in PATCH_LOGIT_HEADS:
            from cxrkit.explain.cam import maps_from_outputs

            res["cam"] = maps_from_outputs(self.model, out, "cam").cpu().numpy()
        return res


def load_bundle(path: str | Path, device: str | torch.device = "cpu", amp_dtype: torch.dtype | None = None):
    """Load a bundle directory in any fresh process; returns a :class:`Predictor` (or an ensemble predictor)."""
    path = Path(path)
    config = read_bundle_config(path)
    if config.get("ensemble"):
        from cxrkit.bundle.ensemble import load_ensemble

        return load_ensemble(path, config, load_bundle, device=device, amp_dtype=amp_dtype)
    from cxrkit.models import create_model

    spec = dict(config["model"])
    arch, num_classes = spec.pop("arch"), spec.pop("num_classes")
    model = create_model(arch, num_classes, **spec)
    try:
        model.load_state_dict(read_bundle_weights(path))
    except RuntimeError as exc:
        raise BundleError(f"{path}: weights do not match the architecture in config.json: {exc}") from exc
    return Predictor(model, config, device=device, path=path, amp_dtype=amp_dtype)
