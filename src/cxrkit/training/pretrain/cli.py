"""`cxr pretrain`: a thin shell over :func:`cxrkit.training.pretrain.pretrain`."""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer


def pretrain_command(
    sources: List[Path] = typer.Argument(..., help="Unlabelled films: cache folders (cxr prepare) and/or folders of "
                                                   "PNG / JPEG / DICOM files."),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder: checkpoints, history.jsonl, backbone.safetensors."),
    arch: Optional[str] = typer.Option(None, help="Backbone architecture.", show_default="densenet121"),
    image_size: Optional[int] = typer.Option(None, "--image-size", "--size", help="Input side in px.",
                                             show_default="224"),
    epochs: Optional[int] = typer.Option(None, help="Epochs.", show_default="100"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Films per batch per process.",
                                             show_default="64"),
    lr: Optional[float] = typer.Option(None, help="SGD base learning rate (scaled by batch / 256).",
                                       show_default="0.05"),
    proj_dim: Optional[int] = typer.Option(None, "--proj-dim", help="Projector width (predictor: a quarter).",
                                           show_default="2048"),
    crop_scale: Optional[float] = typer.Option(None, "--crop-scale", help="Smallest random crop, as a share of the "
                                                                          "film's area.", show_default="0.35"),
    precision: Optional[str] = typer.Option(None, help="Precision: auto | bf16 | fp16 | fp32 (auto: bf16 on GPU)."),
    device: Optional[str] = typer.Option(None, help="Device: auto | cpu | cuda | cuda:N."),
    seed: Optional[int] = typer.Option(None, help="Seed of init, shuffling and views.", show_default="0"),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Cap steps per epoch."),
    checkpoint_every: Optional[int] = typer.Option(None, "--checkpoint-every",
                                                   help="Also checkpoint every N steps (0: epoch ends)."),
    num_threads: Optional[int] = typer.Option(None, "--num-threads", help="CPU threads for torch."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
) -> None:
    """Self-supervised pretraining (SimSiam) of a backbone on unlabelled films; its OUT/backbone.safetensors
    initialises `cxr train --pretrained`."""
    from cxrkit.training.pretrain import PretrainConfig, pretrain
    from cxrkit.training.pretrain.config import RESUME_MUTABLE
    from cxrkit.training.pretrain.engine import CONFIG_NAME

    given = {"sources": [str(s) for s in sources], "out": str(out), "arch": arch, "image_size": image_size,
             "epochs": epochs, "batch_size": batch_size, "lr": lr, "proj_dim": proj_dim, "crop_scale": crop_scale,
             "precision": precision, "device": device, "seed": seed, "max_steps_per_epoch": max_steps,
             "checkpoint_every": checkpoint_every, "num_threads": num_threads, "quiet": quiet or None,
             "resume": resume or None}
    given = {k: v for k, v in given.items() if v is not None}
    stored = out / CONFIG_NAME
    data = {}
    if resume and stored.is_file():
        data = json.loads(stored.read_text())
        clash = [k for k, v in given.items() if k not in RESUME_MUTABLE and data.get(k) != v]
        if clash:
            from cxrkit.training.config import ConfigError

            raise ConfigError(f"cannot resume {out} with different {', '.join(clash)}; drop those options")
    cfg = PretrainConfig.from_dict({**data, **given}).validate()
    result = pretrain(cfg)
    from cxrkit.training.distributed import env_info

    if env_info().is_main:
        typer.echo(f"pretrained {cfg.arch} on {result.n_films} films for {result.epochs_run} epochs (final loss "
                   f"{result.final_loss:.4f}); backbone: {result.backbone}  ->  cxr train CACHE --pretrained "
                   f"{result.backbone} ...")
