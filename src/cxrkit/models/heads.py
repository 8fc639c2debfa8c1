"""Classification heads on top of a B x F x h x w feature map."""
from __future__ import annotations

import math

import torch
from torch import nn


class LinearHead(nn.Module):
    """Global average pooling + one linear layer: the CheXNet head, and the one CAM is exact for."""

    def __init__(self, num_features: int, num_classes: int, drop_rate: float = 0.0):
        super().__init__()
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(num_features, num_classes)

    def forward(self, feats: torch.Tensor) -> tuple[torch.Tensor, None]:
        return self.fc(self.drop(feats.mean(dim=(2, 3)))), None


class AttentionHead(nn.Module):
    """Class-wise spatial attention pooling: each finding attends to its own region of the feature map.

    logit_c = w_c . sum_s a_c(s) f(s) + b_c with a_c = softmax_s(q_c . f(s)); the maps a_c are returned so they
    can be shown next to Grad-CAM.
    """

    def __init__(self, num_features: int, num_classes: int, drop_rate: float = 0.0):
        super().__init__()
        self.query = nn.Conv2d(num_features, num_classes, kernel_size=1)
        self.drop = nn.Dropout(drop_rate)
        self.weight = nn.Parameter(torch.empty(num_classes, num_features))
        self.bias = nn.Parameter(torch.zeros(num_classes))
        nn.init.normal_(self.weight, std=0.01)

    def forward(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, f, h, w = feats.shape
        attn = self.query(feats).flatten(2).softmax(dim=-1)          # B x C x hw
        pooled = torch.bmm(attn, feats.flatten(2).transpose(1, 2))    # B x C x F
        logits = (self.drop(pooled) * self.weight).sum(-1) + self.bias
        return logits, attn.view(b, -1, h, w)


class LSEHead(nn.Module):
    """Class-wise log-sum-exp pooling of patch logits (LSE pooling, as in ChestX-ray8, Wang et al. 2017, but over
    each finding's patch logits rather than the features, so the CAM is still the map the logit is pooled from).

    logit_c = b_c + (1/r) log mean_s exp(r w_c . f(s)): r -> 0 is average pooling (the linear head), r -> inf
    max pooling. Average pooling dilutes a finding that fills one cell of the map (a nodule) by the number of
    cells; LSE lets the hottest cells decide. The weights have the linear head's shape and name (``fc``), so CAM,
    box supervision and weight imports treat both alike; CAM's exactness (its mean is the logit) does not hold.
    """

    def __init__(self, num_features: int, num_classes: int, drop_rate: float = 0.0, r: float = 5.0):
        super().__init__()
        if not r > 0:
            raise ValueError(f"LSE pooling needs r > 0, got {r}")
        self.r = float(r)
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(num_features, num_classes)

    def forward(self, feats: torch.Tensor) -> tuple[torch.Tensor, None]:
        patch = torch.einsum("cf,bfhw->bchw", self.fc.weight, self.drop(feats)).flatten(2)  # B x C x hw
        pooled = (torch.logsumexp(self.r * patch, dim=-1) - math.log(patch.shape[-1])) / self.r
        return pooled + self.fc.bias, None


HEADS = {"linear": LinearHead, "attention": AttentionHead, "lse": LSEHead}
# heads whose patch logits are fc.weight . f(s) at every cell: CAM reads them, box supervision trains them
PATCH_LOGIT_HEADS = ("linear", "lse")
CAM_HEADS = PATCH_LOGIT_HEADS + ("attention",)  # heads CAM has a map for (the attention head weighs it by a_c)
