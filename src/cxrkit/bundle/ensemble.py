"""Ensemble bundles: several member bundles (``members/i/``) combined into one predictor with the same interface
as :class:`cxrkit.bundle.Predictor` (label_names, thresholds, config, predict, predict_full, forward_uint8,
positives). Built by ``cxr ensemble`` (:func:`cxrkit.evaluation.ensembles.build_ensemble`)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from cxrkit.bundle.calibration import apply_calibration
from cxrkit.bundle.format import BundleError
from cxrkit.bundle.base import BasePredictor, abnormality_from_probs

ENSEMBLE_METHODS = ("mean", "weighted", "vote", "max")
_EPS = 1e-6


class EnsemblePredictor(BasePredictor):
    """Combines member predictors' probabilities: ``mean``, ``weighted`` (weights in the config), ``vote`` (fraction
    of members over their own thresholds) or ``max``. ``members`` is the list of member predictors (explainers
    average their heatmaps)."""

    def __init__(self, members: Sequence, config: dict, *, path: Path | None = None,
                 device: str | torch.device = "cpu"):
        ens = config["ensemble"]
        self.method = ens.get("method", "mean")
        if self.method not in ENSEMBLE_METHODS:
            raise BundleError(f"unknown ensemble method {self.method!r}; expected one of {ENSEMBLE_METHODS}")
        self.members = list(members)
        if not self.members:
            raise BundleError("an ensemble bundle needs at least one member")
        super().__init__(config, path=path)
        self.device = torch.device(device)
        for i, m in enumerate(self.members):
            if tuple(m.label_names) != self.label_names:
                raise BundleError(f"ensemble member {i} predicts {list(m.label_names)}, the ensemble "
                                  f"{list(self.label_names)}: members must share the label order")
        w = np.asarray(ens.get("weights") or [1.0] * len(self.members), dtype=np.float64)
        if w.shape != (len(self.members),) or np.any(w < 0) or w.sum() <= 0:
            raise BundleError(f"ensemble weights {w.tolist()} must be {len(self.members)} non-negative numbers "
                              "with a positive sum")
        self.weights = w / w.sum()

    def _combine(self, outs: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        probs = np.stack([o["probs"] for o in outs]).astype(np.float64)  # M x N x C
        abn = np.stack([o["abnormality"] for o in outs]).astype(np.float64)  # M x N
        if self.method == "max":
            p, a = probs.max(axis=0), abn.max(axis=0)
        elif self.method == "vote":
            votes = np.stack([o["probs"] >= m.thresholds for o, m in zip(outs, self.members)])
            p, a = votes.mean(axis=0), abn.mean(axis=0)
        else:  # mean (equal weights) or weighted
            w = self.weights if self.method == "weighted" else np.full(len(outs), 1.0 / len(outs))
            p, a = np.tensordot(w, probs, axes=1), np.tensordot(w, abn, axes=1)
        p = np.clip(p, _EPS, 1 - _EPS)
        logits = np.log(p) - np.log1p(-p)
        probs_out = apply_calibration(logits, self.config.get("calibration"))
        if not any(_has_normal_head(m) for m in self.members):
            # no member has a normal/abnormal head: the score is defined as the largest finding probability, and a
            # mean of the members' maxima could exceed every one of the ensemble's own finding probabilities
            a = abnormality_from_probs(np.asarray(probs_out, dtype=np.float64))
        return {"logits": logits.astype(np.float32), "probs": probs_out, "abnormality": a.astype(np.float32)}

    def to_uint8_batch(self, images) -> torch.Tensor:
        """Bring images to the ensemble's stored geometry (B x 1 x P x P uint8), as the first member does."""
        return self.members[0].to_uint8_batch(images)

    def forward_uint8(self, batch_u8: torch.Tensor) -> dict[str, np.ndarray]:
        """uint8 B x 1 x P x P -> {"logits", "probs", "abnormality"} (cache fast path; each member resizes)."""
        return self._combine([m.forward_uint8(batch_u8) for m in self.members])

    def predict_full(self, images, batch_size: int = 32) -> dict[str, np.ndarray]:
        """Each member applies its own training geometry to ``images``; outputs are then combined."""
        return self._combine([m.predict_full(images, batch_size) for m in self.members])


def _has_normal_head(member) -> bool:
    """Whether a member scores abnormality with its own head (nested ensembles: any of theirs)."""
    if hasattr(member, "members"):
        return any(_has_normal_head(m) for m in member.members)
    return bool(((getattr(member, "config", None) or {}).get("model") or {}).get("normal_head"))


def load_ensemble(path: str | Path, config: dict, load_bundle, device: str | torch.device = "cpu",
                  amp_dtype: torch.dtype | None = None) -> EnsemblePredictor:
    """Load the members listed in ``config["ensemble"]["members"]`` (paths relative to the bundle) with
    ``load_bundle(member, device=, amp_dtype=)`` and combine them. ``load_bundle`` is passed in because
    :func:`cxrkit.bundle.predictor.load_bundle`, which loads every bundle, calls this module for ensembles."""
    path = Path(path)
    rels = config["ensemble"].get("members") or []
    members = []
    for rel in rels:
        member = (path / rel).resolve()
        if not member.is_relative_to(path.resolve()):  # a member path must not escape the bundle directory
            raise BundleError(f"{path}: ensemble member {rel!r} lies outside the bundle")
        members.append(load_bundle(member, device=device, amp_dtype=amp_dtype))
    return EnsemblePredictor(members, config, path=path, device=device)
