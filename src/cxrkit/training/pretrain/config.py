"""What defines a pretraining run; stored as OUT/pretrain_config.json so ``--resume`` continues the same run."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from cxrkit.training.config import ConfigError, PRECISIONS

# keys a resumed run may change: they do not alter what is computed
RESUME_MUTABLE = frozenset({"epochs", "quiet", "num_threads", "resume", "out", "sources", "checkpoint_every"})


@dataclass
class PretrainConfig:
    """SimSiam (Chen & He 2021) defaults: SGD, lr 0.05 x batch / 256, momentum 0.9, weight decay 1e-4, cosine
    decay of the encoder's LR (the predictor keeps its LR), projector 3 layers of ``proj_dim``, predictor bottleneck
    ``proj_dim / 4``. Views: random resized crop (area 0.35-1), rotation +-10 deg, gamma, contrast, Gaussian noise;
    no flip, no colour jitter (docs/small-data.md says why)."""

    sources: list[str] = field(default_factory=list)
    out: str = ""
    arch: str = "densenet121"
    image_size: int = 224
    epochs: int = 100
    batch_size: int = 64
    lr: float = 0.05
    weight_decay: float = 1e-4
    proj_dim: int = 2048
    crop_scale: float = 0.35
    rotate_deg: float = 10.0
    gamma: float = 0.4
    contrast: float = 0.3
    noise: float = 0.03
    precision: str = "auto"
    channels_last: bool = True
    device: str = "auto"
    seed: int = 0
    checkpoint_every: int = 0
    max_steps_per_epoch: int | None = None
    num_threads: int | None = None
    quiet: bool = False
    resume: bool = False

    def validate(self) -> "PretrainConfig":
        problems = []
        if not self.sources:
            problems.append("no SOURCE given: pass a cache folder (cxr prepare) or a folder of films")
        if not self.out:
            problems.append("no output folder given (--out)")
        for name in ("epochs", "batch_size", "image_size", "proj_dim"):
            if int(getattr(self, name)) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.batch_size < 2:
            problems.append("batch_size must be >= 2 (BatchNorm in the projector needs a batch)")
        if self.lr <= 0:
            problems.append(f"lr must be > 0, got {self.lr}")
        if not 0 < self.crop_scale <= 1:
            problems.append(f"crop_scale must be in (0, 1], got {self.crop_scale}")
        if self.precision not in PRECISIONS:
            problems.append(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if problems:
            raise ConfigError("invalid pretraining config: " + "; ".join(problems))
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PretrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown pretraining config keys {unknown}; known keys: {sorted(known)}")
        return cls(**data)
