"""SimSiam (Chen & He, "Exploring Simple Siamese Representation Learning", CVPR 2021): two views of a film go
through the same encoder (backbone + projector); a predictor maps one view's projection to the other's, whose
projection is a constant (stop-gradient). No negatives, no momentum encoder, no large batch."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def projector(dim_in: int, dim: int) -> nn.Module:
    return nn.Sequential(nn.Linear(dim_in, dim, bias=False), nn.BatchNorm1d(dim), nn.ReLU(inplace=True),
                         nn.Linear(dim, dim, bias=False), nn.BatchNorm1d(dim), nn.ReLU(inplace=True),
                         nn.Linear(dim, dim, bias=False), nn.BatchNorm1d(dim, affine=False))


def predictor(dim: int, bottleneck: int) -> nn.Module:
    return nn.Sequential(nn.Linear(dim, bottleneck, bias=False), nn.BatchNorm1d(bottleneck), nn.ReLU(inplace=True),
                         nn.Linear(bottleneck, dim))


class SimSiam(nn.Module):
    """``forward(x1, x2) -> (loss, z1)``; ``backbone`` is the cxrkit backbone (feature map B x F x h x w)."""

    def __init__(self, backbone: nn.Module, num_features: int, dim: int = 2048):
        super().__init__()
        self.backbone = backbone
        self.projector = projector(num_features, dim)
        self.predictor = predictor(dim, max(dim // 4, 16))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.backbone(x).mean(dim=(2, 3)))

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z1, z2 = self.encode(x1), self.encode(x2)
        p1, p2 = self.predictor(z1), self.predictor(z2)
        loss = -(F.cosine_similarity(p1.float(), z2.detach().float(), dim=-1).mean()
                 + F.cosine_similarity(p2.float(), z1.detach().float(), dim=-1).mean()) / 2
        return loss, z1.detach()


def collapse_std(z: torch.Tensor) -> float:
    """Std over the batch of the l2-normalised projections, averaged over dimensions: ~1/sqrt(dim) when the
    representation is healthy, 0 when it has collapsed to a constant (the paper's collapse indicator)."""
    return float(F.normalize(z.float(), dim=1).std(dim=0).mean())
