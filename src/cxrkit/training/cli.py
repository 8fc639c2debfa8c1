"""`cxr train` and `cxr bench train`: thin shells over :func:`cxrkit.training.train` and the benchmark."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer


def train_command(
    cache: Path = typer.Argument(..., help="Prepared cache folder (from `cxr prepare`)."),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder: checkpoints, history, TensorBoard, bundle/."),
    arch: Optional[str] = typer.Option(None, help="Architecture (see `cxrkit.models.list_models`).", show_default="densenet121"),
    epochs: Optional[int] = typer.Option(None, help="Epochs.", show_default="10"),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint."),
    config: Optional[Path] = typer.Option(None, "--config", help="TOML or JSON file of TrainConfig settings."),
    preset: Optional[str] = typer.Option(None, help="'cpu-demo': the small CPU recipe of docs/training.md; "
                                                    "'small-data': the few-label recipe of docs/small-data.md."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Images per micro-batch per process.", show_default="16"),
    accum_steps: Optional[int] = typer.Option(None, "--accum-steps", help="Micro-batches per optimiser step.", show_default="1"),
    lr: Optional[float] = typer.Option(None, help="Adam learning rate.", show_default="1e-3"),
    image_size: Optional[int] = typer.Option(None, "--image-size", "--size", help="Model input side in px.", show_default="224"),
    precision: Optional[str] = typer.Option(None, help="Precision: auto | bf16 | fp16 | fp32 (auto: bf16 on GPU, fp32 on CPU)."),
    compile: Optional[bool] = typer.Option(None, "--compile/--no-compile", help="Compile the model with torch.compile."),
    channels_last: Optional[bool] = typer.Option(None, "--channels-last/--no-channels-last",
                                                 help="Channels-last memory layout (faster convolutions on GPU).",
                                                 show_default="on"),
    select: Optional[str] = typer.Option(None, help="Bundle weights: best epoch by validation 'auroc' or 'loss', or "
                                                    "'last' (the final epoch's, EMA ones with --ema-decay).",
                                         show_default="auroc"),
    ema_decay: Optional[float] = typer.Option(None, "--ema-decay", help="Keep an exponential moving average of the "
                                                                        "weights (e.g. 0.99); it is validated and shipped.",
                                              show_default="off"),
    pos_weight_power: Optional[float] = typer.Option(None, "--pos-weight-power",
                                                     help="Class weight = (negatives/positives) ** POWER: 1 CheXNet's,"
                                                          " 0.5 softer for rare findings, 0 unweighted.",
                                                     show_default="1"),
    box_supervision: Optional[float] = typer.Option(None, "--box-supervision",
                                                    help="Share of training films (0-1) whose ground-truth boxes also "
                                                         "train where each finding is (limited box supervision; "
                                                         "docs/explain.md). The others train on labels only.",
                                                    show_default="0: labels only"),
    box_loss_weight: Optional[float] = typer.Option(None, "--box-loss-weight",
                                                    help="Weight of the box loss beside the label loss.",
                                                    show_default="0.1"),
    freeze: Optional[str] = typer.Option(None, help="Backbone weights kept fixed: none, linear-probe (all: only the "
                                                    "head learns) or partial (the first half of its convolutions).",
                                         show_default="none"),
    early_stop: Optional[int] = typer.Option(None, "--early-stop", help="Stop after N epochs without improvement.", show_default="5"),
    checkpoint_every: Optional[int] = typer.Option(None, "--checkpoint-every",
                                                   help="Also checkpoint every N optimiser steps (0: epoch ends)."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Cap optimiser steps per epoch."),
    seed: Optional[int] = typer.Option(None, help="Seed of init, shuffling and augmentation.", show_default="0"),
    device: Optional[str] = typer.Option(None, help="Device: auto | cpu | cuda | cuda:N."),
    pretrained: Optional[str] = typer.Option(None, help="Backbone initialisation: a torchvision/timm weights file, "
                                                        "a bundle folder, KIND:FILE (e.g. xrv-densenet121:FILE; "
                                                        "see cxr import) or 'hub'."),
    head: Optional[str] = typer.Option(None, help="Classifier head: linear | attention | lse (log-sum-exp pooling "
                                                  "of the patch logits, for small findings; docs/explain.md).",
                                       show_default="linear"),
    lse_r: Optional[float] = typer.Option(None, help="LSE pooling's sharpness (--head lse): near 0 average, large "
                                                     "max pooling.", show_default="5"),
    normal_head: Optional[bool] = typer.Option(None, "--normal-head/--no-normal-head",
                                               help="Add a normal-vs-abnormal output beside the findings.",
                                               show_default="off"),
    augment: Optional[bool] = typer.Option(None, "--augment/--no-augment",
                                           help="On-device augmentation of training batches (flip, rotate, shift).",
                                           show_default="on"),
    num_threads: Optional[int] = typer.Option(None, "--num-threads", help="CPU threads for torch."),
    deterministic: Optional[bool] = typer.Option(None, "--deterministic/--no-deterministic",
                                                 help="Use torch.use_deterministic_algorithms (exact CPU resume)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or epoch lines."),
    tensorboard: Optional[bool] = typer.Option(None, "--tensorboard/--no-tensorboard",
                                               help="Write TensorBoard event files to the run folder.",
                                               show_default="on"),
    quality_gate: Optional[bool] = typer.Option(None, "--quality-gate/--no-quality-gate",
                                                help="Fit the bundle's input quality gate on the training films.",
                                                show_default="on"),
    export: Optional[bool] = typer.Option(None, "--export/--no-export",
                                          help="Export ONNX + INT8 (accuracy checked on validation) for the fast "
                                               "CPU runtimes.", show_default="on"),
) -> None:
    """Train a classifier on a prepared cache (CheXNet recipe by default); ends with RUN_DIR/bundle."""
    from cxrkit import RESEARCH_NOTICE
    from cxrkit.training.config import check_resume_compatible, read_config_file, resolve_config
    from cxrkit.training.engine import CONFIG_NAME, train

    explicit = {"cache": str(cache), "out": str(out), "arch": arch, "epochs": epochs, "preset": preset,
                "batch_size": batch_size, "accum_steps": accum_steps, "lr": lr, "image_size": image_size,
                "precision": precision, "compile": compile, "channels_last": channels_last, "select": select,
                "ema_decay": ema_decay, "freeze": freeze, "pos_weight_power": pos_weight_power,
                "box_supervision": box_supervision, "box_loss_weight": box_loss_weight,
                "early_stop_patience": early_stop, "checkpoint_every": checkpoint_every,
                "max_steps_per_epoch": max_steps, "seed": seed, "device": device, "pretrained": pretrained,
                "head": head, "lse_r": lse_r, "normal_head": normal_head, "augment": augment,
                "num_threads": num_threads,
                "deterministic": deterministic, "quiet": quiet or None, "tensorboard": tensorboard,
                "quality_gate": quality_gate, "export": export}
    stored = out / CONFIG_NAME
    if resume and stored.is_file():
        given = {**(read_config_file(config) if config else {}), **{k: v for k, v in explicit.items() if v is not None}}
        cfg = check_resume_compatible(json.loads(stored.read_text()), given)
    else:
        cfg = resolve_config(config, **explicit, resume=resume or None)
    result = train(cfg)
    if cfg.select == "last":
        typer.echo(f"final epoch {result.epochs_run}: validation mean AUROC {result.best_metric:.4f}; "
                   f"bundle: {result.bundle_dir}")
    else:
        typer.echo(f"best validation {cfg.select}: {result.best_metric:.4f} (epoch {result.best_epoch + 1}); "
                   f"bundle: {result.bundle_dir}")
    typer.echo(RESEARCH_NOTICE)


def learning_curve_command(
    cache: Path = typer.Argument(..., help="Prepared cache of labelled films (cxr prepare)."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder: runs/, learning_curve.json/.csv/.png."),
    fractions: str = typer.Option("0.1,0.3,1", help="Shares of the labelled pool to train on, comma-separated."),
    init: str = typer.Option("random", help="Initialisations, comma-separated: 'random' or --pretrained values "
                                            "(a cxr pretrain backbone file, a bundle, KIND:FILE)."),
    preset: str = typer.Option("chexnet", help="Recipes, comma-separated: chexnet (cxr train's defaults), "
                                               "small-data, cpu-demo."),
    folds: int = typer.Option(5, help="Patient-level cross-validation folds (1: the cache's own train/val/test)."),
    val_share: float = typer.Option(0.15, "--val-share", help="Share of each fold's training patients held out "
                                                              "for validation."),
    arch: Optional[str] = typer.Option(None, help="Architecture of every run.", show_default="the recipe's"),
    image_size: Optional[int] = typer.Option(None, "--image-size", "--size", help="Model input side in px."),
    epochs: Optional[int] = typer.Option(None, help="Epochs of every run.", show_default="the recipe's"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Images per batch."),
    lr: Optional[float] = typer.Option(None, help="Learning rate of every run.", show_default="the recipe's"),
    num_threads: Optional[int] = typer.Option(None, "--num-threads", help="CPU threads for torch."),
    config: Optional[Path] = typer.Option(None, "--config", help="TOML or JSON file of TrainConfig settings for "
                                                                 "every run."),
    tta: bool = typer.Option(False, "--tta/--no-tta", help="Score with test-time augmentation (zoom and shift "
                                                           "views, no flip)."),
    ensemble: int = typer.Option(1, help="Models per run, trained with different seeds; with K > 1 the mean of their "
                                         "probabilities is scored as a recipe of its own beside the first model."),
    n_boot: int = typer.Option(1000, "--n-boot", help="Bootstrap replicates for the CIs."),
    seed: int = typer.Option(0, help="Seed of folds, subsets and training."),
) -> None:
    """AUROC (95% CI) against the number of labelled films for several recipes and initialisations, by
    patient-level cross-validation; resumable; writes a PNG figure, JSON and CSV."""
    from cxrkit.training.config import read_config_file
    from cxrkit.training.curve import CurveSpec, CurveError, learning_curve

    try:
        shares = [float(x) for x in fractions.split(",") if x.strip()]
    except ValueError:
        raise CurveError(f"--fractions {fractions!r}: give comma-separated shares, e.g. 0.1,0.3,1") from None
    train = {**(read_config_file(config) if config else {}),
             **{k: v for k, v in {"arch": arch, "image_size": image_size, "epochs": epochs, "batch_size": batch_size,
                                  "lr": lr, "num_threads": num_threads}.items() if v is not None}}
    spec = CurveSpec(cache=str(cache), out=str(out), fractions=shares,
                     inits=[x.strip() for x in init.split(",") if x.strip()],
                     presets=[x.strip() for x in preset.split(",") if x.strip()], folds=folds, val_share=val_share,
                     seed=seed, n_boot=n_boot, tta=tta, ensemble=ensemble, train=train)
    report = learning_curve(spec, progress=lambda line: typer.echo(line, err=True))
    for r in report["results"]:
        ci = (f"[{r['ci_low']:.3f}, {r['ci_high']:.3f}]" if r["ci_low"] is not None else "[n/a]")
        auc = f"{r['mean_auroc']:.3f}" if r["mean_auroc"] is not None else "n/a"
        vs = r.get("vs_reference")
        diff = (f"; {vs['diff']:+.3f} [{vs['ci_low']:+.3f}, {vs['ci_high']:+.3f}] vs {vs['reference']} (paired)"
                if vs and vs["diff"] is not None and vs["ci_low"] is not None else "")
        typer.echo(f"{r['recipe']:<40} {r['fraction']:>5g} ({r['n_labelled']:.0f} labelled films): mean AUROC "
                   f"{auc} {ci}{diff}")
    typer.echo(f"wrote {out / 'learning_curve.png'}, .json and .csv")


def bench_train_command(
    cache: Optional[Path] = typer.Option(None, help="Cache to read.",
                                         show_default="build a phantom one"),
    source: Optional[Path] = typer.Option(None, help="Dataset folder (any format cxr prepare reads) to cache and "
                                                     "read; default: a phantom set built in --work-dir."),
    work_dir: Optional[Path] = typer.Option(None, "--work-dir", help="Where to build inputs.",
                                            show_default="a temp dir"),
    arch: str = typer.Option("densenet121", help="Architecture of the cxrkit path."),
    size: int = typer.Option(224, help="Model input side (px) for both paths."),
    batch: int = typer.Option(256, help="Batch size of the cxrkit path."),
    ref_batch: int = typer.Option(16, "--ref-batch", help="Reference recipe batch size (CheXNet: 16)."),
    steps: int = typer.Option(30, help="Timed steps (after warm-up) for each path."),
    warmup: int = typer.Option(5, help="Untimed warm-up steps."),
    precision: str = typer.Option("auto", help="Precision of the cxrkit path (auto: bf16 on GPU)."),
    compile: Optional[bool] = typer.Option(None, "--compile/--no-compile", help="Compile the model with torch.compile.",
                                         show_default="on with CUDA"),
    channels_last: bool = typer.Option(True, "--channels-last/--no-channels-last",
                                       help="Channels-last memory layout on the cxrkit path."),
    workers: Optional[int] = typer.Option(None, help="Reference DataLoader workers.",
                                          show_default="all cores"),
    n_images: Optional[int] = typer.Option(None, "--n-images", help="Phantom images to build when none are given."),
    png_size: Optional[int] = typer.Option(None, "--png-size", help="Phantom PNG side.",
                                          show_default="1024 on GPU"),
    device: str = typer.Option("auto", help="Device: auto | cpu | cuda."),
    skip_reference: bool = typer.Option(False, "--skip-reference", help="Only time the cxrkit path."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the result as JSON here."),
) -> None:
    """Training throughput: cxrkit (cache, on-device aug, AMP, channels_last, compile) vs the reference CheXNet
    recipe (PIL + torchvision transforms, fp32, batch 16); prints both img/s and the ratio."""
    from cxrkit.training.bench import BenchSpec, format_result, run_bench

    spec = BenchSpec(cache=cache, source=source, work_dir=work_dir, arch=arch, size=size, batch=batch,
                     ref_batch=ref_batch, steps=steps, warmup=warmup, precision=precision, compile=compile,
                     channels_last=channels_last, workers=workers, n_images=n_images, png_size=png_size, device=device,
                     skip_reference=skip_reference)
    result = run_bench(spec)
    typer.echo(format_result(result))
    if out:
        out.write_text(json.dumps(result, indent=2))


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    """Add `cxr train`, `cxr pretrain`, `cxr learning-curve` and `cxr bench train`."""
    from cxrkit.training.pretrain.cli import pretrain_command

    app.command("train")(train_command)
    app.command("pretrain")(pretrain_command)
    app.command("learning-curve")(learning_curve_command)
    groups["bench"].command("train")(bench_train_command)
