"""The training configuration: CheXNet defaults, a CPU demo preset, file loading (TOML/JSON) and CLI overrides."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from cxrkit.data.errors import CxrError


class ConfigError(CxrError):
    """A training configuration (file or option) is invalid."""


PRECISIONS = ("auto", "bf16", "fp16", "fp32")
SCHEDULES = ("plateau", "cosine")
SELECT = ("auroc", "loss", "last")
OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")
FREEZE = ("none", "linear-probe", "partial")
# Keys a resumed run may change: they do not alter what is computed, only how long or how loudly.
RESUME_MUTABLE = frozenset({"epochs", "quiet", "checkpoint_every", "early_stop_patience", "tensorboard",
                            "num_threads", "log_every", "resume", "out", "cache",
                            "quality_gate", "export"})


@dataclass
class TrainConfig:
    """Everything that defines a training run. Defaults follow CheXNet (Rajpurkar et al. 2017): DenseNet-121 at
    224 px, class-weighted BCE, Adam 1e-3, LR x0.1 when the validation loss plateaus (``lr_schedule="plateau"``;
    ``"cosine"`` anneals per step to 1% instead, steadier for short runs), best model by validation AUROC. ``batch_size * accum_steps * world_size`` is the effective batch."""

    cache: str = ""
    out: str = ""
    arch: str = "densenet121"
    pretrained: str | None = None
    head: str = "linear"  # linear (CheXNet) | attention | lse (log-sum-exp pooling of the patch logits)
    lse_r: float = 5.0  # LSE pooling's sharpness (head "lse" only)
    normal_head: bool = False
    drop_rate: float = 0.0
    image_size: int = 224
    input_channels: int = 1  # 3: the grey film fed to a 3-channel stem (R = G = B), as RGB-first recipes do
    epochs: int = 10
    batch_size: int = 16
    accum_steps: int = 1
    lr: float = 1e-3
    optimizer: str = "adam"  # adam | adamw (decoupled weight decay) | sgd (Nesterov, momentum 0.9) | rmsprop
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    lr_schedule: str = "plateau"
    lr_factor: float = 0.1
    lr_patience: int = 1
    early_stop_patience: int | None = 5
    select: str = "auroc"
    pos_weight: bool = True
    # CheXNet's class weight is negatives/positives; the power softens it (0.5: its square root) or removes it (0),
    # a searchable loss-weighting strength for rare findings
    pos_weight_power: float = 1.0
    # limited box supervision (training/box_supervision.py): the share of training films whose boxes train the
    # patch logits too (0: labels only), and that loss's weight beside the label loss
    box_supervision: float = 0.0
    box_loss_weight: float = 0.1
    augment: bool = True
    hflip: bool = True
    rotate_deg: float = 7.0
    translate: float = 0.05
    scale: float = 0.05
    crop_scale: float = 0.0
    gamma: float = 0.0
    contrast: float = 0.0
    noise: float = 0.0
    warmup_epochs: float = 0.0
    ema_decay: float | None = None
    freeze: str = "none"
    precision: str = "auto"
    channels_last: bool = True
    compile: bool = False
    device: str = "auto"
    seed: int = 0
    checkpoint_every: int = 0
    max_steps_per_epoch: int | None = None
    train_split: str = "train"
    val_split: str = "val"
    label_names: list[str] | None = None
    cache_size: int | None = None
    num_threads: int | None = None
    deterministic: bool = False
    quiet: bool = False
    tensorboard: bool = True
    quality_gate: bool = True
    export: bool = True  # ONNX + INT8 (accuracy-checked on validation) at the end, for the fast CPU runtimes
    log_every: int = 10
    resume: bool = False
    preset: str | None = None

    @classmethod
    def small_data_preset(cls, **overrides: Any) -> "TrainConfig":
        """The few-label recipe ("small-data", docs/small-data.md) for a few hundred labelled films: radiograph
        augmentation (random resized crop, rotation, gamma, contrast, noise; no horizontal flip: the heart is on
        the left), 2 warm-up epochs then a per-step cosine, weight decay, weight EMA, 30 epochs, and the final EMA
        weights in the bundle (``select="last"``): choosing an epoch on a 40-image validation split mostly picks
        noise. The architecture is left to the user (``--arch``)."""
        base = dict(epochs=30, lr=1e-3, weight_decay=1e-4, lr_schedule="cosine", warmup_epochs=2.0,
                    early_stop_patience=None, select="last", ema_decay=0.99, hflip=False, rotate_deg=10.0,
                    translate=0.0, scale=0.0, crop_scale=0.6, gamma=0.3, contrast=0.25, noise=0.03, drop_rate=0.2,
                    preset="small-data")
        base.update(overrides)
        return cls(**base)

    @classmethod
    def demo_preset(cls, **overrides: Any) -> "TrainConfig":
        """The CPU demo recipe ("cpu-demo", docs/training.md): the small ``cxr_tiny`` CNN at 160 px, 20 epochs of a
        3,000-image 160-px phantom set: phantom test mean AUROC 0.925-0.934 after 4 min 05 s - 4 min 17 s of training on
        the idle 2-core dev VM (docs/benchmarks.md, "The demo"); slower in proportion when the cores are shared."""
        base = dict(arch="cxr_tiny", image_size=160, epochs=20, batch_size=32, accum_steps=1, lr=1e-3,
                    lr_schedule="cosine", early_stop_patience=None, precision="fp32", channels_last=False,
                    rotate_deg=5.0, translate=0.04, scale=0.04, preset="cpu-demo")
        base.update(overrides)
        return cls(**base)

    def validate(self) -> "TrainConfig":
        """Check ranges and choices; returns self so it chains. Raises :class:`ConfigError`."""
        from cxrkit.models.heads import HEADS, PATCH_LOGIT_HEADS  # here: importing torch is for training time

        problems = []
        if self.precision not in PRECISIONS:
            problems.append(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.lr_schedule not in SCHEDULES:
            problems.append(f"lr_schedule must be one of {SCHEDULES}, got {self.lr_schedule!r}")
        if self.optimizer not in OPTIMIZERS:
            problems.append(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.input_channels not in (1, 3):
            problems.append(f"input_channels must be 1 (grey) or 3 (grey copied to RGB), got {self.input_channels}")
        elif self.input_channels == 3 and self.pretrained is not None:
            problems.append("input_channels = 3 trains a 3-channel stem from scratch; a --pretrained net keeps its own"
                            " stem: leave input_channels at 1")
        if self.select not in SELECT:
            problems.append(f"select must be one of {SELECT}, got {self.select!r}")
        if self.freeze not in FREEZE:
            problems.append(f"freeze must be one of {FREEZE}, got {self.freeze!r}")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            problems.append(f"ema_decay must be in (0, 1), got {self.ema_decay}")
        if self.warmup_epochs < 0 or (self.warmup_epochs > 0 and self.lr_schedule != "cosine"):
            problems.append("warmup_epochs must be >= 0 and needs lr_schedule='cosine'")
        if not 0 <= self.crop_scale < 1:
            problems.append(f"crop_scale must be in [0, 1) (the smallest crop's area share), got {self.crop_scale}")
        if not 0 <= self.pos_weight_power <= 2:
            problems.append(f"pos_weight_power must be in [0, 2] (0: unweighted BCE, 1: CheXNet's negatives/positives),"
                            f" got {self.pos_weight_power}")
        if not 0 <= self.box_supervision <= 1:
            problems.append(f"box_supervision must be in [0, 1] (the share of training films whose boxes are used), "
                            f"got {self.box_supervision}")
        elif self.box_supervision > 0 and self.head not in PATCH_LOGIT_HEADS:
            problems.append(f"box_supervision trains the head's patch logits; head {self.head!r} has none: "
                            "use head = 'linear' or 'lse'")
        if self.head not in HEADS:
            problems.append(f"head must be one of {sorted(HEADS)}, got {self.head!r}")
        if not self.lse_r > 0:
            problems.append(f"lse_r must be > 0 (LSE pooling's sharpness: small is average, large is max pooling), "
                            f"got {self.lse_r}")
        if self.box_loss_weight < 0:
            problems.append(f"box_loss_weight must be >= 0, got {self.box_loss_weight}")
        for name in ("gamma", "contrast", "noise"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("epochs", "batch_size", "accum_steps", "image_size"):
            if int(getattr(self, name)) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            problems.append(f"lr must be > 0, got {self.lr}")
        if not 0 < self.lr_factor < 1:
            problems.append(f"lr_factor must be in (0, 1), got {self.lr_factor}")
        if self.checkpoint_every < 0:
            problems.append("checkpoint_every must be >= 0 (0: only at epoch ends)")
        if len(tuple(self.betas)) != 2:
            problems.append(f"betas must be two numbers, got {self.betas!r}")
        if not self.cache:
            problems.append("no cache given: pass the folder `cxr prepare` wrote")
        if not self.out:
            problems.append("no output run folder given (--out)")
        if problems:
            raise ConfigError("invalid training config: " + "; ".join(problems))
        self.betas = (float(self.betas[0]), float(self.betas[1]))
        return self

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown training config keys {unknown}; known keys: {sorted(known)}")
        data = dict(data)
        if "betas" in data:
            data["betas"] = tuple(data["betas"])
        preset = data.get("preset")
        if preset is None:
            return cls(**data)
        if preset not in PRESETS:
            raise ConfigError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
        return getattr(cls, PRESETS[preset])(**{k: v for k, v in data.items() if k != "preset"})


# preset name -> the TrainConfig constructor that fills in its defaults (explicit settings still win)
PRESETS = {"cpu-demo": "demo_preset", "small-data": "small_data_preset"}


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML (.toml) or JSON config file into a flat dict of TrainConfig keys."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        if path.suffix.lower() == ".toml":
            import tomllib

            data = tomllib.loads(path.read_text())
        else:
            data = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"could not parse config file {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a table/object of settings")
    # a [train] table is accepted so one TOML can hold several sections
    return dict(data.get("train", data))


def resolve_config(file: str | Path | None = None, **overrides: Any) -> TrainConfig:
    """File values, then explicit overrides (None means 'not given'); validated."""
    data = read_config_file(file) if file else {}
    data.update({k: v for k, v in overrides.items() if v is not None})
    if data.get("pretrained") and "arch" not in data:
        # weights that name their architecture (a bundle, a cxrkit backbone, xrv / CheXNet files) choose it
        from cxrkit.models.imports import source_arch

        arch = source_arch(data["pretrained"])
        if arch is not None:
            data["arch"] = arch
    return TrainConfig.from_dict(data).validate()


def check_resume_compatible(stored: dict[str, Any], explicit: dict[str, Any]) -> TrainConfig:
    """A resumed run keeps its stored config; explicitly given settings may only change harmless keys
    (:data:`RESUME_MUTABLE`), anything else that differs is refused."""
    merged = dict(stored)
    clash = []
    for key, value in explicit.items():
        if value is None:
            continue
        if key in RESUME_MUTABLE:
            merged[key] = value
        elif _norm(value) != _norm(stored.get(key)):
            clash.append(f"{key}: run has {stored.get(key)!r}, given {value!r}")
    if clash:
        raise ConfigError("cannot resume with a different configuration (" + "; ".join(clash) + "); start a new run "
                          "folder or drop these options")
    merged["resume"] = True
    return TrainConfig.from_dict(merged).validate()


def _norm(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


def replace(config: TrainConfig, **changes: Any) -> TrainConfig:
    """dataclasses.replace, re-exported so callers need not import dataclasses."""
    return dataclasses.replace(config, **changes)


__all__ = ["ConfigError", "PRESETS", "TrainConfig", "read_config_file", "resolve_config", "check_resume_compatible", "replace"]
