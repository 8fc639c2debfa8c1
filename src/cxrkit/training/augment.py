"""On-device augmentation: horizontal flip + small affine (rotate, scale, translate) for a whole batch at once.

Random parameters come from a CPU ``torch.Generator`` seeded from (seed, epoch, step, rank), so a resumed run draws
exactly the same augmentations, and the global RNGs of torch/numpy are never touched. The warp itself is one
``affine_grid`` + ``grid_sample`` on the batch's device (GPU when training on one).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentSpec:
    hflip: bool = True
    rotate_deg: float = 7.0
    translate: float = 0.05  # fraction of the image side
    scale: float = 0.05      # zoom range: 1 +- scale

    @property
    def is_identity(self) -> bool:
        return not self.hflip and self.rotate_deg == 0 and self.translate == 0 and self.scale == 0


def step_generator(seed: int, epoch: int, step: int, rank: int = 0) -> torch.Generator:
    """A CPU generator unique to one (seed, epoch, step, rank)."""
    state = np.random.SeedSequence([int(seed), int(epoch), int(step), int(rank)]).generate_state(2, dtype=np.uint32)
    gen = torch.Generator()
    gen.manual_seed(int(state[0]) << 32 | int(state[1]))
    return gen


def affine_params(n: int, spec: AugmentSpec, gen: torch.Generator) -> torch.Tensor:
    """n x 2 x 3 affine_grid matrices (output -> input sampling coordinates) drawn from ``gen``."""
    u = torch.rand(n, 5, generator=gen, dtype=torch.float64)
    angle = (u[:, 0] * 2 - 1) * math.radians(spec.rotate_deg)
    zoom = 1 + (u[:, 1] * 2 - 1) * spec.scale
    tx = (u[:, 2] * 2 - 1) * spec.translate * 2  # affine_grid coordinates span 2 per image side
    ty = (u[:, 3] * 2 - 1) * spec.translate * 2
    flip = torch.where((u[:, 4] < 0.5) & torch.tensor(spec.hflip), -1.0, 1.0).to(torch.float64)
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack([torch.stack([cos * flip, -sin, tx], 1), torch.stack([sin * flip, cos, ty], 1)], 1)
    return theta.to(torch.float32)


def augment_batch(x: torch.Tensor, theta: torch.Tensor, fill: float) -> torch.Tensor:
    """Warp a normalised float batch B x C x H x W; pixels from outside the image take ``fill`` (black after
    normalisation, i.e. (0 - mean) / std, like fit_square's padding)."""
    if x.device.type == "cuda" and theta.device.type == "cpu":
        theta = theta.pin_memory().to(x.device, non_blocking=True)  # a pageable copy would sync every step
    theta = theta.to(device=x.device, dtype=x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + fill


def augment(x: torch.Tensor, spec: AugmentSpec, seed: int, epoch: int, step: int, rank: int, mean: float,
            std: float) -> torch.Tensor:
    """Augment one training batch (already through :func:`cxrkit.models.to_model_input`)."""
    if spec.is_identity:
        return x
    theta = affine_params(x.shape[0], spec, step_generator(seed, epoch, step, rank))
    return augment_batch(x, theta, fill=(0.0 - mean) / std)
