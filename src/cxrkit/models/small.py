"""``cxr_tiny``: a small plain CNN for CPU demos and CI, where even ResNet-10 is too slow to train in minutes.

Nine 3x3 conv + BN + ReLU layers, stride 32 overall, 256 feature channels: 60 MMAC at 128 px (ResNet-10t:
356, i.e. 6x more), all dense convolutions, which oneDNN runs fastest on a CPU (MobileNetV3-small needs fewer MACs
but its depthwise convolutions made it slower per image on these CPUs).
"""
from __future__ import annotations

import torch
from torch import nn


def _conv(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class TinyCNN(nn.Module):
    """B x in_chans x H x W -> B x 256 x H/32 x W/32."""

    def __init__(self, in_chans: int = 1, widths: tuple[int, ...] = (24, 32, 64, 128, 256)):
        super().__init__()
        layers = _conv(in_chans, widths[0], 2)
        for cin, cout in zip(widths[:-1], widths[1:]):
            layers += _conv(cin, cout, 2) + _conv(cout, cout)
        self.features = nn.Sequential(*layers)
        self.num_features = widths[-1]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


def tiny_backbone(in_chans: int = 1) -> tuple[nn.Module, int]:
    net = TinyCNN(in_chans)
    return net, net.num_features
