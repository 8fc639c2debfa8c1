"""``train(config)``: the epoch loop with resume, validation, model selection, early stopping and the final bundle."""
from __future__ import annotations

import itertools
import json
import math
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cxrkit.data.errors import CacheError
from cxrkit.training.checkpoint import (BEST_WEIGHTS, LAST, VAL_PREDICTIONS, atomic_write, load_checkpoint, plain,
                                        save_checkpoint)
from cxrkit.training.config import ConfigError, RESUME_MUTABLE, TrainConfig
from cxrkit.training import distributed as dist_util
from cxrkit.training.losses import prevalence_pos_weight
from cxrkit.training.monitor import Monitor, write_history
from cxrkit.training.thresholds import mean_auroc, per_class_auroc
from cxrkit.training.trainer import NonFiniteLossError, Trainer, ValOutput, merge_val

CONFIG_NAME = "config.json"


@dataclass
class TrainResult:
    """What a finished run produced."""

    run_dir: Path
    bundle_dir: Path | None
    best_metric: float
    best_epoch: int
    history: Path
    epochs_run: int
    stopped_early: bool


@contextmanager
def _process_settings(cfg: TrainConfig, device: torch.device):
    """Threads / determinism / cudnn are process-wide switches: set them for the run and put them back after."""
    threads, det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    bench = torch.backends.cudnn.benchmark
    try:
        if cfg.num_threads:
            torch.set_num_threads(int(cfg.num_threads))
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=device.type == "cuda")
        elif device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(det)
        torch.backends.cudnn.benchmark = bench


def _check_cache(cfg: TrainConfig, cache) -> TrainConfig:
    """Refuse a cache that does not match the config; fill in what the config left open."""
    names = list(cache.label_names)
    if cfg.label_names is not None and list(cfg.label_names) != names:
        raise CacheError(f"cache {cache.path} has labels {names} but the config expects {list(cfg.label_names)}; "
                         "use a cache prepared with the same label set")
    if cfg.cache_size is not None and int(cfg.cache_size) != cache.size:
        raise CacheError(f"cache {cache.path} stores {cache.size}-px images but the config expects "
                         f"{cfg.cache_size} px; prepare a cache with --size {cfg.cache_size} or change the config")
    cfg.label_names, cfg.cache_size = names, cache.size
    return cfg


def _prepare_run_dir(cfg: TrainConfig, cache, is_main: bool) -> tuple[Path, dict | None]:
    run = Path(cfg.out)
    ckpt_path = run / "checkpoints" / LAST
    stored_path = run / CONFIG_NAME
    if cfg.resume:
        if not stored_path.is_file():
            raise ConfigError(f"{run} holds no run to resume ({CONFIG_NAME} missing); drop --resume")
        stored = json.loads(stored_path.read_text())
        clash = [k for k, v in cfg.to_dict().items()
                 if k not in RESUME_MUTABLE and k in stored and _norm(stored[k]) != _norm(v)]
        if clash:
            detail = "; ".join(f"{k}: run {stored[k]!r} vs now {cfg.to_dict()[k]!r}" for k in clash)
            exc = CacheError if {"label_names", "cache_size"} & set(clash) else ConfigError
            raise exc(f"cannot resume {run}: the configuration differs ({detail})")
        state = load_checkpoint(ckpt_path) if ckpt_path.is_file() else None
        if state is not None and state.get("data_hash") != cache.manifest.get("content_hash"):
            raise CacheError(f"cannot resume {run}: it was trained on a cache with content hash {state.get('data_hash')}"
                             f" but {cache.path} has {cache.manifest.get('content_hash')}; use the original cache")
        return run, state
    if ckpt_path.exists() or (run / "bundle").exists():
        raise ConfigError(f"{run} already holds a training run; pass --resume to continue it or choose a new --out")
    if is_main:
        run.mkdir(parents=True, exist_ok=True)
        atomic_write(stored_path, json.dumps(cfg.to_dict(), indent=2).encode())
    return run, None


def _norm(v):
    return list(v) if isinstance(v, tuple) else v


def _make_loader(cache, rows, cfg: TrainConfig, info, device, train: bool):
    from cxrkit.data.loader import CacheLoader

    per_rank = math.ceil(len(rows) / info.world_size)
    drop_last = train and per_rank >= cfg.batch_size
    return CacheLoader(cache, rows, cfg.batch_size, shuffle=train, seed=cfg.seed, drop_last=drop_last,
                       rank=info.rank, world_size=info.world_size, device=device)


EpochCallback = Callable[[dict], bool]


def train(config: TrainConfig, on_epoch: EpochCallback | None = None) -> TrainResult:
    """Train a classifier on a prepared cache as ``config`` says; resumable; ends with RUN_DIR/bundle.

    Works alone or in each process of a ``torchrun`` job (only rank 0 writes files). ``on_epoch``, if given, is
    called on rank 0 with each epoch's history record (the line history.jsonl gets); returning True stops the run
    after that epoch like early stopping does, so the run still ends with its best epoch's bundle (the hook
    ``cxr tune`` prunes trials through).
    """
    from cxrkit.data.cache import open_cache

    cfg = TrainConfig.from_dict(config.to_dict()).validate()
    info = dist_util.env_info()
    device = dist_util.pick_device(cfg.device, info)
    created = dist_util.init(info, device)
    try:
        with _process_settings(cfg, device):
            cache = open_cache(cfg.cache)
            cfg = _check_cache(cfg, cache)
            run_dir, state = _prepare_run_dir(cfg, cache, info.is_main)
            dist_util.barrier(info)
            return _fit(cfg, cache, run_dir, state, info, device, on_epoch)
    finally:
        dist_util.shutdown(created)


def _fit(cfg: TrainConfig, cache, run_dir: Path, state: dict | None, info, device,
         on_epoch: EpochCallback | None = None) -> TrainResult:
    train_rows, val_rows = cache.rows(cfg.train_split), cache.rows(cfg.val_split)
    if len(train_rows) == 0 or len(val_rows) == 0:
        raise CacheError(f"cache {cache.path} has {len(train_rows)} {cfg.train_split!r} and {len(val_rows)} "
                         f"{cfg.val_split!r} images; training needs both splits")
    pos_weight = prevalence_pos_weight(cache.labels(train_rows), cfg.pos_weight_power) if cfg.pos_weight else None
    boxes = None
    if cfg.box_supervision > 0:
        from cxrkit.training.box_supervision import BoxTargets

        boxes = BoxTargets.from_cache(cache, train_rows, cfg.box_supervision, cfg.seed)
        if info.is_main and not cfg.quiet:
            print(f"box supervision: the boxes of {boxes.n_films} of {len(train_rows)} training films "
                  f"({boxes.n_boxes} boxes); the other films train on their labels only", flush=True)
    trainer = Trainer(cfg, len(cache.label_names), pos_weight, device, info, boxes=boxes)
    train_loader = _make_loader(cache, train_rows, cfg, info, device, train=True)
    val_loader = _make_loader(cache, val_rows, cfg, info, device, train=False)
    n_micro_all = len(train_loader)
    if n_micro_all == 0:
        raise CacheError(f"the {cfg.train_split!r} split has too few images for one batch of {cfg.batch_size}")
    steps = max(1, n_micro_all // cfg.accum_steps)
    if cfg.max_steps_per_epoch:
        steps = min(steps, int(cfg.max_steps_per_epoch))
    n_micro = min(n_micro_all, steps * cfg.accum_steps)

    s = {"epoch": 0, "micro": 0, "global_step": 0, "loss_sum": 0.0, "loss_n": 0, "history": [], "best": None,
         "best_epoch": -1, "bad_epochs": 0, "stopped_early": False, "data_hash": cache.manifest.get("content_hash")}
    if state is not None:
        trainer.load_state_dict(state["trainer"])
        s.update({k: state[k] for k in s if k in state})
    monitor = Monitor(run_dir, enabled=info.is_main, quiet=cfg.quiet, tensorboard=cfg.tensorboard)
    ckpt_dir = run_dir / "checkpoints"

    def checkpoint() -> None:
        if info.is_main:
            save_checkpoint(ckpt_dir / LAST, {"trainer": trainer.state_dict(), **plain(s), "config": cfg.to_dict()})

    try:
        while s["epoch"] < cfg.epochs and not s["stopped_early"]:
            epoch = s["epoch"]
            train_loader.set_epoch(epoch)
            monitor.start_epoch(epoch, cfg.epochs, n_micro, s["micro"])
            t0, seen, pending, shown_loss = time.perf_counter(), 0, 0, float("nan")
            run_loss = torch.zeros((), device=device)
            batches = itertools.islice(iter(train_loader), s["micro"], n_micro)  # resume mid-epoch where we stopped
            for images, labels, rows in batches:
                i = s["micro"]
                group_start = (i // cfg.accum_steps) * cfg.accum_steps
                divisor = min(cfg.accum_steps, n_micro - group_start)
                last_of_group = i + 1 == group_start + divisor
                loss = trainer.micro_step(images, labels, epoch, i, divisor, sync=last_of_group,
                                          rows=rows.numpy() if boxes is not None else None)
                bs = int(images.shape[0])
                run_loss += loss * bs
                seen, pending = seen + bs, pending + bs
                s["micro"] += 1
                if not last_of_group:
                    continue
                if cfg.lr_schedule == "cosine":
                    trainer.cosine_lr(s["global_step"], steps * cfg.epochs, round(cfg.warmup_epochs * steps))
                trainer.optimizer_step()
                s["global_step"] += 1
                at_log = s["global_step"] % max(1, cfg.log_every) == 0
                at_ckpt = bool(cfg.checkpoint_every) and s["global_step"] % cfg.checkpoint_every == 0
                rate = seen / max(time.perf_counter() - t0, 1e-9)
                if at_log or at_ckpt or s["micro"] == n_micro:
                    # one host sync per log interval, not per step: this is also where a NaN loss is caught
                    total = float(run_loss.item())
                    run_loss.zero_()
                    if not math.isfinite(total):
                        raise NonFiniteLossError(
                            f"training loss became {total} at epoch {epoch + 1}, step {s['global_step']}; lower --lr "
                            "(or use --precision bf16/fp32), and check the cache for broken images")
                    s["loss_sum"] += total
                    s["loss_n"] += pending
                    pending = 0
                    shown_loss = s["loss_sum"] / max(s["loss_n"], 1)
                    monitor.scalars({"train/loss": shown_loss, "train/lr": trainer.lr(), "train/img_per_s": rate},
                                    s["global_step"])
                    if at_ckpt:
                        checkpoint()
                monitor.step(divisor, shown_loss, rate)
            elapsed = time.perf_counter() - t0
            img_s = seen * info.world_size / max(elapsed, 1e-9)
            _end_epoch(cfg, trainer, val_loader, cache, run_dir, s, info, device, monitor, img_s, elapsed)
            if on_epoch is not None:
                stop = bool(on_epoch(dict(s["history"][-1]))) if info.is_main else None
                stop = bool(dist_util.broadcast(stop, info))
                if stop and not s["stopped_early"] and s["epoch"] < cfg.epochs:
                    monitor.message(f"stopping after epoch {s['epoch']} of {cfg.epochs}: the on_epoch hook asked "
                                    "to stop (e.g. a cxr tune pruner)")
                s["stopped_early"] = s["stopped_early"] or stop
            checkpoint()
            if info.is_main:
                write_history(run_dir, s["history"])
    finally:
        monitor.close()
    dist_util.barrier(info)
    bundle_dir = None
    if info.is_main:
        from cxrkit.training.finalize import write_bundle

        bundle_dir = write_bundle(cfg, cache, run_dir, trainer, s)
        if cfg.quality_gate:
            from cxrkit.training.finalize import fit_training_gate

            monitor.message(fit_training_gate(cfg, cache, bundle_dir))
        if cfg.export:  # last: the exported graphs embed the final config (gate included)
            from cxrkit.deploy.auto_export import export_after_training

            monitor.message(export_after_training(bundle_dir, cache, train_split=cfg.train_split,
                                                  val_split=cfg.val_split, seed=cfg.seed))
    return TrainResult(run_dir, bundle_dir, float(s["best"]) if s["best"] is not None else float("nan"),
                       int(s["best_epoch"]), run_dir / "history.jsonl", int(s["epoch"]), bool(s["stopped_early"]))


def _end_epoch(cfg, trainer: Trainer, val_loader, cache, run_dir: Path, s: dict, info, device, monitor, img_s: float,
               elapsed: float) -> None:
    """Validate, step the LR scheduler, keep the best model, decide on early stopping; advance the epoch."""
    epoch = s["epoch"]
    parts = dist_util.gather_to_main(trainer.predict(val_loader), info)
    record = None
    if info.is_main:
        val = merge_val(parts)
        val_loss = trainer.val_loss(val)
        aucs = per_class_auroc(val.labels, val.logits, cache.label_names)
        mean = mean_auroc(aucs)
        train_loss = s["loss_sum"] / max(s["loss_n"], 1)
        score = (mean if math.isfinite(mean) else -math.inf) if cfg.select == "auroc" else -val_loss
        # select="last": every epoch replaces the previous one, so the bundle holds the final (EMA) weights
        improved = (cfg.select == "last" or s["best"] is None
                    or score > (s["best"] if cfg.select == "auroc" else -s["best"]))
        record = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "val_mean_auroc": mean,
                  "val_auroc": aucs, "lr": trainer.lr(), "img_per_s": img_s, "time_s": elapsed,
                  "step": s["global_step"], "improved": bool(improved)}
        if improved:
            _save_best(run_dir, trainer, val, cache)
        monitor.scalars({"val/loss": val_loss, "val/mean_auroc": mean, "train/epoch_loss": train_loss,
                         "train/epoch_img_per_s": img_s, **{f"val_auroc/{k}": v for k, v in aucs.items()}}, epoch + 1)
        monitor.epoch_line(record)
    record = dist_util.broadcast(record, info)
    if cfg.lr_schedule == "plateau":
        trainer.scheduler.step(record["val_loss"])
    if record["improved"]:
        s["best"] = record["val_loss"] if cfg.select == "loss" else record["val_mean_auroc"]
        s["best_epoch"], s["bad_epochs"] = epoch, 0
    else:
        s["bad_epochs"] += 1
    s["history"].append(record)
    s["stopped_early"] = (cfg.early_stop_patience is not None and cfg.select != "last"
                          and s["bad_epochs"] >= cfg.early_stop_patience)
    if s["stopped_early"] and epoch + 1 < cfg.epochs:
        what = "mean AUROC" if cfg.select == "auroc" else "loss"
        monitor.message(f"early stopping after epoch {epoch + 1} of {cfg.epochs}: validation {what} has not "
                        f"improved for {s['bad_epochs']} epochs (--early-stop {cfg.early_stop_patience}); best "
                        f"{s['best']:.4f} at epoch {s['best_epoch'] + 1}, whose weights go into the bundle")
    s.update(epoch=epoch + 1, micro=0, loss_sum=0.0, loss_n=0)


def _save_best(run_dir: Path, trainer: Trainer, val: ValOutput, cache) -> None:
    """Best weights (safetensors) and the validation predictions they made, each written atomically."""
    import io

    from safetensors.torch import save as st_save

    sd = {k: v.detach().cpu().contiguous() for k, v in trainer.eval_model.state_dict().items()}
    atomic_write(run_dir / "checkpoints" / BEST_WEIGHTS, st_save(sd))
    probs = 1.0 / (1.0 + np.exp(-val.logits.astype(np.float64)))
    image_ids = cache.index["image_id"].to_numpy()[val.rows].astype(str)
    buf = io.BytesIO()
    np.savez(buf, rows=val.rows, image_ids=image_ids, logits=val.logits, probs=probs.astype(np.float32),
             labels=val.labels, label_names=np.asarray(cache.label_names, dtype=str))
    atomic_write(run_dir / VAL_PREDICTIONS, buf.getvalue())
