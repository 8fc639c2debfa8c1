"""CheXNet's class-weighted binary cross-entropy, with unknown (NaN) labels masked out."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def prevalence_pos_weight(labels: np.ndarray, power: float = 1.0) -> np.ndarray:
    """pos_weight = (negatives / positives) ** power per class, counted over known (non-NaN) training labels.

    A class with no positive (or no negative) keeps weight 1: there is nothing to balance. ``power`` 1 is CheXNet's
    weighting, 0.5 its square root (rare findings weighted less extremely), 0 no weighting.
    """
    labels = np.asarray(labels, dtype=np.float64)
    known = ~np.isnan(labels)
    pos = np.where(known, labels > 0.5, False).sum(axis=0).astype(np.float64)
    neg = known.sum(axis=0) - pos
    weight = np.ones(labels.shape[1], dtype=np.float64)
    ok = (pos > 0) & (neg > 0)
    weight[ok] = (neg[ok] / pos[ok]) ** float(power)
    return weight.astype(np.float32)


def masked_bce(logits: torch.Tensor, labels: torch.Tensor, pos_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean weighted BCE over the known entries of a B x C label matrix (NaN = unknown, contributes nothing)."""
    logits = logits.float()
    known = ~torch.isnan(labels)
    target = torch.where(known, labels, torch.zeros_like(labels))
    loss = F.binary_cross_entropy_with_logits(logits, target, pos_weight=pos_weight, reduction="none")
    loss = torch.where(known, loss, torch.zeros_like(loss))
    return loss.sum() / known.sum().clamp(min=1)


def abnormal_target(labels: torch.Tensor) -> torch.Tensor:
    """The normal/abnormal label: 1 if any finding is positive, 0 if all are known negative, NaN otherwise."""
    known = ~torch.isnan(labels)
    any_pos = (torch.where(known, labels, torch.zeros_like(labels)) > 0.5).any(dim=1)
    all_known = known.all(dim=1)
    out = torch.full_like(labels[:, 0], float("nan"))
    out = torch.where(any_pos, torch.ones_like(out), out)
    return torch.where(~any_pos & all_known, torch.zeros_like(out), out)
