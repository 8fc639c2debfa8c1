"""The one uint8-to-model-input transform shared by training, evaluation and every inference backend."""
from __future__ import annotations

import torch
import torch.nn.functional as F

# ImageNet's RGB mean/std averaged over channels: the right grey statistics for ImageNet-pretrained backbones whose
# first conv has been summed over RGB, and harmless for training from scratch.
GREY_MEAN = 0.449
GREY_STD = 0.226


def to_model_input(images_u8: torch.Tensor, size: int, mean: float = GREY_MEAN, std: float = GREY_STD,
                   dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 B x 1 x H x W (already square, from :func:`cxrkit.data.transforms.fit_square`) -> normalised float.

    Resizes to ``size`` with antialiased bilinear interpolation when the stored size differs, so a cache at 256 px
    feeds a 224-px model exactly as the predictor does at inference time.
    """
    if images_u8.ndim == 3:
        images_u8 = images_u8.unsqueeze(1)
    x = images_u8.to(dtype=torch.float32).div_(255.0)
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    x = x.sub_(mean).div_(std)
    return x.to(dtype)
