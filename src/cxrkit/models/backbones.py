"""Backbone builders: every one returns (module mapping B x 1 x H x W -> B x F x h x w, F)."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

# cxrkit name -> timm name. Grey input goes in as one channel: timm sums a pretrained first conv over RGB
# (adapt_input_conv), which costs nothing at run time, unlike repeating the image three times.
TIMM_ALIASES: dict[str, str] = {
    "resnet18": "resnet18",
    "resnet50": "resnet50",
    "resnet10t": "resnet10t",
    "vgg19_bn": "vgg19_bn",
    "inception_v3": "inception_v3",
    "mobilenetv2": "mobilenetv2_100",
    "mobilenetv3": "mobilenetv3_large_100",
    "mobilenetv3_small": "mobilenetv3_small_100",
    "convnext_tiny": "convnext_tiny",
    "timm_densenet121": "densenet121",
    **{f"efficientnet_b{i}": f"efficientnet_b{i}" for i in range(8)},
}


class _TimmFeatures(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)


def timm_backbone(timm_name: str, in_chans: int = 1) -> tuple[nn.Module, int]:
    import timm

    model = timm.create_model(timm_name, pretrained=False, num_classes=0, global_pool="", in_chans=in_chans)
    return _TimmFeatures(model), model.num_features


class _DenseNetFeatures(nn.Module):
    def __init__(self, features: nn.Module):
        super().__init__()
        self.features = features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.features(x))  # torchvision applies this ReLU in forward(), not in .features


def densenet121_backbone(in_chans: int = 1) -> tuple[nn.Module, int]:
    """torchvision's DenseNet-121 (the CheXNet architecture) with a ``in_chans``-channel stem."""
    from torchvision.models import densenet121

    net = densenet121(weights=None)
    if in_chans != 3:
        old = net.features.conv0
        net.features.conv0 = nn.Conv2d(in_chans, old.out_channels, kernel_size=7, stride=2, padding=3, bias=False)
    return _DenseNetFeatures(net.features), net.classifier.in_features


def build_backbone(name: str, in_chans: int = 1) -> tuple[nn.Module, int]:
    if name == "densenet121":
        return densenet121_backbone(in_chans)
    if name == "cxr_tiny":
        from cxrkit.models.small import tiny_backbone

        return tiny_backbone(in_chans)
    if name == "cxr_tiny_s16":
        from cxrkit.models.small import tiny_backbone

        return tiny_backbone(in_chans, output_stride=16)
    if name in TIMM_ALIASES:
        return timm_backbone(TIMM_ALIASES[name], in_chans)
    if name.startswith("timm:"):
        return timm_backbone(name[5:], in_chans)
    raise KeyError(name)


BACKBONES: dict[str, Callable] = {"densenet121": densenet121_backbone, "cxr_tiny": None, "cxr_tiny_s16": None,
                                  **{k: None for k in TIMM_ALIASES}}
