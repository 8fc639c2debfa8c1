"""On-device augmentation: horizontal flip + small affine (rotate, scale, translate) for a whole batch at once, and
for few-label and self-supervised training the radiograph set: random resized crop, gamma, contrast / brightness and
Gaussian noise (no colour jitter: a film has one channel, and its grey levels carry the findings).

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
    crop_scale: float = 0.0  # random resized crop: area fraction drawn from [crop_scale, 1] (0: off)
    gamma: float = 0.0       # gamma drawn log-uniformly from [1 / (1 + gamma), 1 + gamma] (0: off)
    contrast: float = 0.0    # contrast and brightness: x -> (x - 0.5) * U(1 +- contrast) + 0.5 + U(+- contrast / 2)
    noise: float = 0.0       # Gaussian noise of std drawn from [0, noise] (pixel units, 0..1)

    @property
    def is_identity(self) -> bool:
        return (not self.hflip and self.rotate_deg == 0 and self.translate == 0 and self.scale == 0
                and self.crop_scale == 0 and not self.has_intensity)

    @property
    def has_intensity(self) -> bool:
        return self.gamma > 0 or self.contrast > 0 or self.noise > 0


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
    if spec.crop_scale > 0:
        theta = _crop(theta, spec.crop_scale, torch.rand(n, 4, generator=gen, dtype=torch.float64))
    return theta.to(torch.float32)


def _crop(theta: torch.Tensor, min_area: float, u: torch.Tensor) -> torch.Tensor:
    """Compose a random resized crop (area in [min_area, 1], aspect 3:4-4:3, anywhere inside the image) after
    ``theta``: the output shows that crop, warped as ``theta`` says, at full size."""
    area = min_area + (1 - min_area) * u[:, 0]
    aspect = torch.exp((u[:, 1] * 2 - 1) * math.log(4 / 3))
    w, h = torch.sqrt(area * aspect).clamp(max=1), torch.sqrt(area / aspect).clamp(max=1)
    cx, cy = (u[:, 2] * 2 - 1) * (1 - w), (u[:, 3] * 2 - 1) * (1 - h)
    crop = torch.zeros(theta.shape[0], 3, 3, dtype=torch.float64)
    crop[:, 0, 0], crop[:, 1, 1], crop[:, 0, 2], crop[:, 1, 2], crop[:, 2, 2] = w, h, cx, cy, 1
    full = torch.cat([theta, torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64).expand(theta.shape[0], 1, 3)], 1)
    return (full @ crop)[:, :2]


def intensity(x01: torch.Tensor, spec: AugmentSpec, gen: torch.Generator) -> torch.Tensor:
    """Gamma, contrast / brightness and noise on a B x C x H x W batch in pixel units [0, 1]; clipped to [0, 1].
    Per-image factors come from ``gen`` (CPU); the noise field from a generator on the batch's device seeded by it."""
    n = x01.shape[0]
    u = torch.rand(n, 4, generator=gen, dtype=torch.float64)
    shape = (n, 1, 1, 1)
    out = x01
    if spec.gamma > 0:
        g = torch.exp((u[:, 0] * 2 - 1) * math.log1p(spec.gamma))
        out = out.clamp(min=0).pow(g.to(out.device, out.dtype).view(shape))
    if spec.contrast > 0:
        c = 1 + (u[:, 1] * 2 - 1) * spec.contrast
        b = (u[:, 2] * 2 - 1) * spec.contrast / 2
        out = (out - 0.5) * c.to(out.device, out.dtype).view(shape) + 0.5 + b.to(out.device, out.dtype).view(shape)
    if spec.noise > 0:
        dev_gen = torch.Generator(device=out.device)
        dev_gen.manual_seed(int(torch.randint(0, 2**62, (1,), generator=gen)))
        sigma = (u[:, 3] * spec.noise).to(out.device, out.dtype).view(shape)
        out = out + sigma * torch.randn(out.shape, generator=dev_gen, device=out.device, dtype=out.dtype)
    return out.clamp(0, 1)


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
    gen = step_generator(seed, epoch, step, rank)
    theta = affine_params(x.shape[0], spec, gen)
    x = augment_batch(x, theta, fill=(0.0 - mean) / std)
    if spec.has_intensity:
        x = (intensity(x * std + mean, spec, gen) - mean) / std
    return x

