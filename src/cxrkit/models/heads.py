"""Classification heads on top of a B x F x h x w feature map."""
from __future__ import annotations

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


HEADS = {"linear": LinearHead, "attention": AttentionHead}
