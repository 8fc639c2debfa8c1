"""``pretrain(config)``: the SimSiam epoch loop, resumable from OUT/checkpoints/last.pt, with AMP and DDP as in
``cxr train`` (same device / process-group helpers), ending with OUT/backbone.safetensors."""
from __future__ import annotations

import itertools
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from cxrkit.data.errors import CxrError
from cxrkit.training import distributed as dist_util
from cxrkit.training.checkpoint import LAST, atomic_write, load_checkpoint, plain, save_checkpoint
from cxrkit.training.config import ConfigError
from cxrkit.training.pretrain.config import RESUME_MUTABLE, PretrainConfig

CONFIG_NAME = "pretrain_config.json"
BACKBONE_FILE = "backbone.safetensors"
HISTORY = "history.jsonl"


@dataclass
class PretrainResult:
    out: Path
    backbone: Path
    epochs_run: int
    final_loss: float
    n_films: int


def pretrain(config: PretrainConfig, on_epoch=None) -> PretrainResult:
    """Pretrain ``config.arch`` on the unlabelled films of ``config.sources``; resumable; alone or under torchrun.
    ``on_epoch(record)`` (rank 0, optional) returning True stops after that epoch, backbone written, as
    :func:`cxrkit.training.train`'s hook does; ``--resume`` continues such a run."""
    cfg = PretrainConfig.from_dict(config.to_dict()).validate()
    info = dist_util.env_info()
    device = dist_util.pick_device(cfg.device, info)
    created = dist_util.init(info, device)
    threads = torch.get_num_threads()
    try:
        if cfg.num_threads:
            torch.set_num_threads(int(cfg.num_threads))
        return _run(cfg, info, device, on_epoch)
    finally:
        torch.set_num_threads(threads)
        dist_util.shutdown(created)


def _prepare_out(cfg: PretrainConfig, info) -> tuple[PretrainConfig, dict | None]:
    out = Path(cfg.out)
    stored, ckpt = out / CONFIG_NAME, out / "checkpoints" / LAST
    if cfg.resume:
        if not stored.is_file():
            raise ConfigError(f"{out} holds no pretraining run to resume ({CONFIG_NAME} missing); drop --resume")
        old = json.loads(stored.read_text())
        clash = [k for k, v in cfg.to_dict().items() if k not in RESUME_MUTABLE and old.get(k) != v]
        if clash:
            raise ConfigError(f"cannot resume {out} with different settings ({', '.join(clash)}); drop them or "
                              "start a new --out")
        return cfg, (load_checkpoint(ckpt) if ckpt.is_file() else None)
    if ckpt.exists() or (out / BACKBONE_FILE).exists():
        raise ConfigError(f"{out} already holds a pretraining run; pass --resume to continue it or choose a new --out")
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write(stored, json.dumps(cfg.to_dict(), indent=2).encode())
    return cfg, None


def _build(cfg: PretrainConfig, device: torch.device):
    from cxrkit.models.backbones import build_backbone
    from cxrkit.training.pretrain.simsiam import SimSiam

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        backbone, num_features = build_backbone(cfg.arch, 1)
        model = SimSiam(backbone, num_features, cfg.proj_dim)
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    return model.to(device).to(memory_format=fmt), fmt


def _run(cfg: PretrainConfig, info, device: torch.device, on_epoch=None) -> PretrainResult:
    from cxrkit.data.loader import CacheLoader
    from cxrkit.models import GREY_MEAN, GREY_STD, to_model_input
    from cxrkit.models.imports.backbone_file import save_backbone
    from cxrkit.training.augment import AugmentSpec, augment
    from cxrkit.training.monitor import Monitor, write_history
    from cxrkit.training.pretrain.films import open_films
    from cxrkit.training.pretrain.simsiam import collapse_std
    from cxrkit.training.trainer import amp_dtype

    cfg, state = _prepare_out(cfg, info)
    out = Path(cfg.out)
    dist_util.barrier(info)
    if info.is_main:  # decode folders once, on rank 0; the others then read OUT/films.npy
        films = open_films(cfg.sources, out, cfg.image_size, progress=not cfg.quiet)
    dist_util.barrier(info)
    if not info.is_main:
        films = open_films(cfg.sources, out, cfg.image_size, progress=False)
    model, fmt = _build(cfg, device)
    if info.enabled and device.type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)  # SimSiam's BN statistics span all GPUs
    net = model
    if info.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        net = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    global_batch = cfg.batch_size * info.world_size
    base_lr = cfg.lr * global_batch / 256  # SimSiam's linear scaling rule
    encoder = [p for n, p in model.named_parameters() if not n.startswith("predictor.")]
    opt = torch.optim.SGD([{"params": encoder, "fixed": False}, {"params": list(model.predictor.parameters()),
                                                                  "fixed": True}],
                          lr=base_lr, momentum=0.9, weight_decay=cfg.weight_decay)
    dtype = amp_dtype(cfg.precision, device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    loader = CacheLoader(films, None, cfg.batch_size, shuffle=True, seed=cfg.seed, drop_last=True, rank=info.rank,
                         world_size=info.world_size, device=device)
    steps = len(loader) if not cfg.max_steps_per_epoch else min(len(loader), int(cfg.max_steps_per_epoch))
    if steps == 0:
        raise CxrError(f"{len(films.images)} films are too few for one batch of {cfg.batch_size} per process; lower "
                       "--batch-size or add films")
    s = {"epoch": 0, "micro": 0, "step": 0, "loss_sum": 0.0, "loss_n": 0, "history": []}
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        s.update({k: state[k] for k in s if k in state})
    spec = AugmentSpec(hflip=False, rotate_deg=cfg.rotate_deg, translate=0.0, scale=0.0, crop_scale=cfg.crop_scale,
                       gamma=cfg.gamma, contrast=cfg.contrast, noise=cfg.noise)
    mean, std = GREY_MEAN, GREY_STD
    monitor = Monitor(out, enabled=info.is_main, quiet=cfg.quiet, tensorboard=False)
    if info.is_main and s["epoch"] == 0 and s["micro"] == 0:
        monitor.message(f"SimSiam pretraining of {cfg.arch} at {cfg.image_size} px on {len(films.images)} films "
                        f"({films.origin}): {steps} steps of {global_batch} per epoch, {cfg.epochs} epochs")
    total = steps * cfg.epochs

    def checkpoint() -> None:
        if info.is_main:
            save_checkpoint(out / "checkpoints" / LAST, {"model": model.state_dict(), "optimizer": opt.state_dict(),
                                                         "scaler": scaler.state_dict(), **plain(s)})

    z = None
    try:
        while s["epoch"] < cfg.epochs:
            epoch = s["epoch"]
            loader.set_epoch(epoch)
            monitor.start_epoch(epoch, cfg.epochs, steps, s["micro"])
            t0, seen = time.perf_counter(), 0
            for images, _labels, _rows in itertools.islice(iter(loader), s["micro"], steps):
                lr = base_lr * 0.5 * (1 + math.cos(math.pi * s["step"] / total))
                for group in opt.param_groups:
                    group["lr"] = base_lr if group["fixed"] else lr
                x = to_model_input(images, cfg.image_size, mean, std)
                x1 = augment(x, spec, cfg.seed, epoch, 2 * s["micro"], info.rank, mean, std).contiguous(
                    memory_format=fmt)
                x2 = augment(x, spec, cfg.seed, epoch, 2 * s["micro"] + 1, info.rank, mean, std).contiguous(
                    memory_format=fmt)
                model.train()
                with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                    loss, z = net(x1, x2)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                opt.zero_grad(set_to_none=True)
                value = float(loss.item())
                if not math.isfinite(value):
                    raise CxrError(f"the SimSiam loss became {value} at epoch {epoch + 1}; lower --lr or use "
                                   "--precision fp32")
                bs = int(images.shape[0])
                s["loss_sum"] += value * bs
                s["loss_n"] += bs
                s["micro"] += 1
                s["step"] += 1
                seen += bs
                rate = seen * info.world_size / max(time.perf_counter() - t0, 1e-9)
                monitor.step(1, s["loss_sum"] / s["loss_n"], rate)
                if cfg.checkpoint_every and s["step"] % cfg.checkpoint_every == 0:
                    checkpoint()
            elapsed = time.perf_counter() - t0
            epoch_loss = dist_util.all_reduce_mean(s["loss_sum"] / max(s["loss_n"], 1), info, device)
            record = {"epoch": epoch, "loss": epoch_loss,
                      "collapse_std": collapse_std(z) if z is not None else None,
                      "lr": float(opt.param_groups[0]["lr"]), "img_per_s": seen * info.world_size / max(elapsed, 1e-9),
                      "time_s": elapsed}
            s["history"].append(record)
            s.update(epoch=epoch + 1, micro=0, loss_sum=0.0, loss_n=0)
            std_text = f"{record['collapse_std']:.3f}" if record["collapse_std"] is not None else "n/a"
            monitor.message(f"epoch {epoch + 1}/{cfg.epochs}: SimSiam loss {record['loss']:.4f} (-1 is the floor)  "
                            f"projection std {std_text} (collapse: 0; healthy: ~{1 / math.sqrt(cfg.proj_dim):.3f})  "
                            f"lr {record['lr']:.2e}  {record['img_per_s']:,.0f} img/s")
            checkpoint()
            if info.is_main:
                write_history(out, s["history"])
            stop = bool(on_epoch(dict(record))) if (on_epoch is not None and info.is_main) else False
            if dist_util.broadcast(stop, info):
                break
    finally:
        monitor.close()
    dist_util.barrier(info)
    path = out / BACKBONE_FILE
    final = s["history"][-1]["loss"] if s["history"] else float("nan")
    if info.is_main:
        save_backbone(path, model.backbone, arch=cfg.arch, in_chans=1, mean=mean, std=std, size=cfg.image_size,
                      method="simsiam", details={"epochs": s["epoch"], "films": int(len(films.images)),
                                                 "sources": [str(x) for x in cfg.sources], "final_loss": final,
                                                 "proj_dim": cfg.proj_dim})
    return PretrainResult(out, path, int(s["epoch"]), float(final), int(len(films.images)))
