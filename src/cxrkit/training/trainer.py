"""One model's training machinery: model, optimiser, scheduler, AMP, DDP, the micro-step and validation.

:mod:`cxrkit.training.engine` drives it epoch by epoch; ``cxr bench train`` drives it step by step.
"""
from __future__ import annotations

import math
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from cxrkit.data.errors import CxrError
from cxrkit.models import GREY_MEAN, GREY_STD, create_model, to_model_input
from cxrkit.training.augment import AugmentSpec, augment, step_generator
from cxrkit.training.box_supervision import BoxTargets, patch_loss, warp_masks
from cxrkit.training.config import TrainConfig
from cxrkit.training.distributed import DistInfo
from cxrkit.training.losses import abnormal_target, masked_bce


class NonFiniteLossError(CxrError):
    """The training loss became NaN or infinite."""


def amp_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for a precision name ('auto': bf16 on a GPU that supports it, fp32 elsewhere)."""
    if precision == "auto":
        bf16_ok = device.type == "cuda" and torch.cuda.is_bf16_supported()
        precision = "bf16" if bf16_ok else "fp32"
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[precision]


class _TrainForward(nn.Module):
    """What DDP wraps: logits, plus the abnormality logit when the model has a normal/abnormal head and the
    feature map when box supervision needs it (None otherwise)."""

    def __init__(self, model: nn.Module, features: bool = False):
        super().__init__()
        self.model, self.features = model, features

    def forward(self, x: torch.Tensor):
        if self.model.has_normal_head or self.features:
            out = self.model.forward_all(x)
            return out["logits"], out["abnormal_logit"], out["features"] if self.features else None
        return self.model(x), None, None


def build_model(cfg: TrainConfig, num_classes: int) -> nn.Module:
    """create_model with the run's seed, restoring torch's global RNG afterwards (init must not leak seeding)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        # input_channels 3: the normalised grey image copied to 3 channels inside the model (an identity
        # ChannelStem), so the bundle's one-channel input contract stays and every consumer works unchanged
        stem = {"mean": [0.0] * 3, "std": [1.0] * 3} if cfg.input_channels == 3 else None
        return create_model(cfg.arch, num_classes, pretrained=cfg.pretrained, head=cfg.head,
                            normal_head=cfg.normal_head, drop_rate=cfg.drop_rate, stem=stem, lse_r=cfg.lse_r)


def make_optimizer(cfg: TrainConfig, params, device: torch.device) -> torch.optim.Optimizer:
    """The run's optimiser; fused kernels (one for all parameters) on the GPU where torch has them."""
    fused = device.type == "cuda" or None
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay,
                                 fused=fused)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay,
                               fused=fused)
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=cfg.lr, alpha=0.9, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay, fused=fused)


@dataclass
class ValOutput:
    rows: np.ndarray
    logits: np.ndarray
    labels: np.ndarray


class Trainer:
    """Holds the model and optimiser state for a run on one device (one rank of a DDP job)."""

    def __init__(self, cfg: TrainConfig, num_classes: int, pos_weight: np.ndarray | None, device: torch.device,
                 info: DistInfo = DistInfo(), boxes: BoxTargets | None = None):
        self.cfg, self.device, self.info, self.boxes = cfg, device, info, boxes
        self.model = build_model(cfg, num_classes).to(device)
        # a network imported with --pretrained KIND:FILE keeps the input normalisation it was trained with
        # (torchxrayvision: [-1024, 1024]); feeding it cxrkit's ImageNet-grey statistics would waste its features
        self.mean, self.std = getattr(self.model, "input_norm", (GREY_MEAN, GREY_STD))
        self.memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        self.model = self.model.to(memory_format=self.memory_format)
        self.has_dropout = any(isinstance(m, nn.Dropout) and m.p > 0 for m in self.model.modules())
        from cxrkit.training.freeze import apply_freeze

        self.frozen_bn = apply_freeze(self.model, cfg.freeze)
        self.pos_weight = (torch.as_tensor(pos_weight, dtype=torch.float32, device=device)
                           if pos_weight is not None else None)
        self.optimizer = make_optimizer(cfg, [p for p in self.model.parameters() if p.requires_grad], device)
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(self.optimizer, mode="min", factor=cfg.lr_factor,
                                                                    patience=cfg.lr_patience)
        self.amp_dtype = amp_dtype(cfg.precision, device)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp_dtype == torch.float16)
        self.aug = AugmentSpec(cfg.hflip, cfg.rotate_deg, cfg.translate, cfg.scale, cfg.crop_scale, cfg.gamma,
                               cfg.contrast, cfg.noise) if cfg.augment else None
        self.ema = None
        if cfg.ema_decay:
            from cxrkit.training.ema import ModelEma

            self.ema = ModelEma(self.model, cfg.ema_decay)
        net: nn.Module = _TrainForward(self.model, features=boxes is not None)
        if info.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            net = DDP(net, device_ids=[device.index] if device.type == "cuda" else None)
        self.ddp = net if info.enabled else None
        self.net = torch.compile(net) if cfg.compile else net

    # -- training --------------------------------------------------------------------------------
    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)

    def prepare_input(self, images_u8: torch.Tensor, epoch: int, step: int, train: bool) -> torch.Tensor:
        """uint8 batch (already on the device) -> the model input: the shared inference transform, then the
        on-device augmentation for training batches."""
        x = to_model_input(images_u8.to(self.device, non_blocking=True), self.cfg.image_size, self.mean, self.std)
        if train and self.aug is not None:
            x = augment(x, self.aug, self.cfg.seed, epoch, step, self.info.rank, self.mean, self.std)
        return x.contiguous(memory_format=self.memory_format)

    def micro_step(self, images_u8: torch.Tensor, labels: torch.Tensor, epoch: int, step: int, divisor: int,
                   sync: bool = True, rows: np.ndarray | None = None) -> torch.Tensor:
        """Forward + backward of one micro-batch; gradients accumulate until :meth:`optimizer_step`. Returns the
        (undivided, detached) loss on the device so callers can avoid a per-step host sync. ``rows``: the batch's
        cache rows, for the boxes of box-supervised films."""
        self.model.train()
        if self.frozen_bn:
            from cxrkit.training.freeze import keep_frozen_eval

            keep_frozen_eval(self.frozen_bn)
        labels = labels.to(self.device, non_blocking=True)
        x = self.prepare_input(images_u8, epoch, step, train=True)
        ctx = self.ddp.no_sync() if (self.ddp is not None and not sync) else nullcontext()
        rng = self._dropout_rng(epoch, step)
        with ctx, rng:
            with self.autocast():
                logits, abnormal, feats = self.net(x)
            loss = masked_bce(logits, labels, self.pos_weight)
            if abnormal is not None:
                loss = loss + masked_bce(abnormal.unsqueeze(1), abnormal_target(labels).unsqueeze(1))
            box = None if self.boxes is None or rows is None else self.boxes.batch_masks(rows, self.cfg.image_size)
            if box is not None:  # the training loss logged per epoch includes this term
                positions, classes, masks = box
                masks = warp_masks(torch.from_numpy(masks).to(self.device), positions, x.shape[0], self.aug,
                                   self.cfg.seed, epoch, step, self.info.rank)
                loss = loss + self.cfg.box_loss_weight * patch_loss(self.model, feats, positions, classes, masks)
            self.scaler.scale(loss / divisor).backward()
        return loss.detach()

    def _dropout_rng(self, epoch: int, step: int):
        """Dropout draws from torch's global RNG: fork it, seeded per step, so resume is exact and global state is
        left as it was."""
        if not self.has_dropout:
            return nullcontext()
        seed = step_generator(self.cfg.seed, epoch, step, self.info.rank).initial_seed() ^ 0x5EED
        devices = [self.device] if self.device.type == "cuda" else []
        return _seeded_global_rng(seed, devices, self.device.type)

    def optimizer_step(self) -> None:
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.model)

    @property
    def eval_model(self) -> nn.Module:
        """What is validated and shipped: the EMA weights when ``ema_decay`` is set, else the model itself."""
        return self.ema.module if self.ema is not None else self.model

    def cosine_lr(self, step: int, total: int, warmup: int = 0) -> None:
        """Set the LR of optimiser step ``step`` of ``total``: linear warm-up over the first ``warmup`` steps, then
        a cosine from cfg.lr down to 1% of it (a pure function of the step, so resume needs no scheduler state)."""
        base = self.cfg.lr
        if step < warmup:
            lr = base * (step + 1) / warmup
        else:
            t = (min(step, total) - warmup) / max(total - warmup, 1)
            lr = base * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * t)))
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    # -- validation ------------------------------------------------------------------------------
    @torch.inference_mode()
    def predict(self, loader) -> ValOutput:
        """Logits of :attr:`eval_model` for this rank's share of ``loader`` (eval mode, no augmentation)."""
        model = self.eval_model
        model.eval()
        rows, logits, labels = [], [], []
        for images_u8, y, r in loader:
            x = self.prepare_input(images_u8, 0, 0, train=False)
            with self.autocast():
                out = model(x)
            logits.append(out.float().cpu().numpy())
            labels.append(y.cpu().numpy() if torch.is_tensor(y) else np.asarray(y))
            rows.append(r.cpu().numpy() if torch.is_tensor(r) else np.asarray(r))
        c = self.model.num_classes
        if not rows:
            return ValOutput(np.zeros(0, np.int64), np.zeros((0, c), np.float32), np.zeros((0, c), np.float32))
        return ValOutput(np.concatenate(rows).astype(np.int64), np.concatenate(logits), np.concatenate(labels))

    def val_loss(self, out: ValOutput) -> float:
        pw = self.pos_weight.cpu() if self.pos_weight is not None else None
        return float(masked_bce(torch.from_numpy(out.logits), torch.from_numpy(out.labels), pw))

    # -- state -----------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict()}
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None and state.get("ema"):
            self.ema.load_state_dict(state["ema"])


@contextmanager
def _seeded_global_rng(seed: int, devices: list, device_type: str):
    with torch.random.fork_rng(devices=devices, device_type=device_type):
        torch.manual_seed(seed)
        yield


def merge_val(parts: list[ValOutput]) -> ValOutput:
    """Concatenate ranks' predictions, drop the rows DDP sharding padded twice, order by row."""
    rows = np.concatenate([p.rows for p in parts])
    logits = np.concatenate([p.logits for p in parts])
    labels = np.concatenate([p.labels for p in parts])
    rows, first = np.unique(rows, return_index=True)
    return ValOutput(rows, logits[first], labels[first])
