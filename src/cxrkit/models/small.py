"""``cxr_tiny``: a small plain CNN for CPU demos and CI, where even ResNet-10 is too slow to train in minutes.

Nine 3x3 conv + BN + ReLU layers, stride 32 overall, 256 feature channels: 60 MMAC at 128 px (ResNet-10t:
356, i.e. 6x more), all dense convolutions, which oneDNN runs fastest on a CPU (MobileNetV3-small needs fewer MACs
but its depthwise convolutions made it slower per image on these CPUs).

``cxr_tiny_s16``: the same layers, but the last stage keeps stride 16 (its first conv does not downsample) and
both of its convs are dilated by 2, so the receptive field stays as large while the feature map is twice as fine
(10 x 10 at 160 px instead of 5 x 5). CAM stays exact on it, and its LayerCAM stage is stride 8 (20 x 20): finer
evidence for findings smaller than a 32-px cell (phantom nodules are ~6 px at 160 px). It costs ~1.7x the MACs
(88 of its ~160 MMAC at 160 px are the last stage, now at 10 x 10).
"""
from __future__ import annotations

import torch
from torch import nn


def _conv(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False),
            nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class TinyCNN(nn.Module):
    """B x in_chans x H x W -> B x 256 x H/32 x W/32 (``output_stride=16``: H/16 x W/16, last stage dilated)."""

    def __init__(self, in_chans: int = 1, widths: tuple[int, ...] = (24, 32, 64, 128, 256), output_stride: int = 32):
        super().__init__()
        if output_stride not in (16, 32):
            raise ValueError(f"output_stride must be 16 or 32, got {output_stride}")
        layers = _conv(in_chans, widths[0], 2)
        last = len(widths) - 2
        for i, (cin, cout) in enumerate(zip(widths[:-1], widths[1:])):
            if i == last and output_stride == 16:
                layers += _conv(cin, cout, 1, dilation=2) + _conv(cout, cout, dilation=2)
            else:
                layers += _conv(cin, cout, 2) + _conv(cout, cout)
        self.features = nn.Sequential(*layers)
        self.output_stride = output_stride
        self.num_features = widths[-1]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


def tiny_backbone(in_chans: int = 1, output_stride: int = 32) -> tuple[nn.Module, int]:
    net = TinyCNN(in_chans, output_stride=output_stride)
    return net, net.num_features
