"""`cxr demo`: the whole pipeline on the embedded phantom dataset, sized for a 2-core laptop.

phantom data -> prepare (cache + patient split) -> data summary -> train (CPU demo preset) -> tune the box
parameters on the validation split's boxes -> evaluate on the test split (metrics with CIs, localisation table + HTML
report) -> DEMO_DIR/summary.md. Each step is skipped when its output is already
complete, so an interrupted demo resumes where it stopped.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Callable

import typer

from cxrkit import RESEARCH_NOTICE


@dataclass
class DemoConfig:
    out: Path = Path("cxr-demo")
    # The measured CPU recipe (docs/training.md): 3,000 films at 160 px reach phantom test mean AUROC ~0.93.
    n_images: int = 3000
    phantom_size: int = 160
    cache_size: int = 160
    seed: int = 0
    epochs: int | None = None   # None: the demo preset's
    n_boot: int = 1000
    tune_boxes: bool = True
    quiet: bool = False


@dataclass
class DemoResult:
    out: Path
    bundle: Path
    report: Path
    metrics: dict
    timings: dict[str, float] = field(default_factory=dict)


def _step(name: str, timings: dict, fn: Callable, echo: Callable[[str], None]):
    echo(f"[cxr demo] {name} ...")
    t0 = time.perf_counter()
    result = fn()
    timings[name] = round(time.perf_counter() - t0, 1)
    echo(f"[cxr demo] {name} done in {timings[name]:.1f} s")
    return result


def run_demo(cfg: DemoConfig, echo: Callable[[str], None] = print) -> DemoResult:
    from cxrkit.data.cache import open_cache, prepare
    from cxrkit.data.phantom import generate
    from cxrkit.data.summary import write_summary
    from cxrkit.evaluation import evaluate
    from cxrkit.training import TrainConfig, train

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    phantom_dir, cache_dir, run_dir, eval_dir = out / "phantom", out / "cache", out / "run", out / "eval"
    timings: dict[str, float] = {}

    if not (phantom_dir / "Data_Entry_2017.csv").is_file():
        _step("phantom", timings, lambda: generate(phantom_dir, cfg.n_images, size=cfg.phantom_size, seed=cfg.seed,
                                                   progress=not cfg.quiet), echo)
    _step("prepare", timings, lambda: prepare(phantom_dir, cache_dir, size=cfg.cache_size, split_seed=cfg.seed,
                                              progress=not cfg.quiet), echo)
    cache = open_cache(cache_dir)
    _step("data summary", timings, lambda: write_summary(cache, out / "data-summary"), echo)

    bundle = run_dir / "bundle"
    if not (bundle / "config.json").is_file():
        overrides = {"cache": str(cache_dir), "out": str(run_dir), "seed": cfg.seed, "quiet": cfg.quiet,
                     "resume": (run_dir / "checkpoint.pt").exists()}
        if cfg.epochs is not None:
            overrides["epochs"] = cfg.epochs
        _step("train", timings, lambda: train(TrainConfig.demo_preset(**overrides)), echo)

    if cfg.tune_boxes and not _has_tuned_boxes(bundle):
        _step("tune boxes", timings, lambda: _tune_boxes(bundle, cache, cfg.quiet), echo)

    metrics = _step("evaluate", timings, lambda: evaluate(bundle, cache, split="test", out=eval_dir,
                                                          n_boot=cfg.n_boot, seed=cfg.seed, progress=not cfg.quiet,
                                                          command=f"cxr evaluate {bundle} {cache_dir} --split test "
                                                                  f"--out {eval_dir} --n-boot {cfg.n_boot} --seed {cfg.seed}"),
                    echo)
    report = eval_dir / "report.html"
    _write_summary(out, bundle, report, metrics, timings)
    return DemoResult(out=out, bundle=bundle, report=report, metrics=metrics, timings=timings)


def _has_tuned_boxes(bundle: Path) -> bool:
    from cxrkit.bundle.format import read_bundle_config

    return bool((read_bundle_config(bundle).get("explain") or {}).get("box_tuning"))


def _tune_boxes(bundle: Path, cache, quiet: bool) -> None:
    """`cxr tune-boxes BUNDLE CACHE`: per-finding box parameters and the map method, fitted on validation."""
    import importlib.util

    from cxrkit.bundle import load_bundle
    from cxrkit.explain.box_tuning import store_tuning, tune_boxes

    # LayerCAM needs the optional grad-cam package (cxrkit[explain]); without it CAM's boxes are still tuned
    methods = None if importlib.util.find_spec("pytorch_grad_cam") else ("cam",)
    result = tune_boxes(load_bundle(bundle), cache, cache.rows("val"), methods, progress=not quiet)
    store_tuning(bundle, result, "val")


def _localisation_lines(metrics: dict) -> list[str]:
    loc = metrics.get("localisation") or {}
    entries = {n: e for n, e in loc.items() if isinstance(e, dict) and "n_boxes" in e}
    if not entries:
        return []
    return ["", f"Localisation on the test split (ChestX-ray8 protocol; maps: {loc.get('method')}, box parameters: "
                f"{loc.get('box_params')}):", "", "| finding | boxes | accuracy at T(IoBB)=0.5 |", "|---|---|---|",
            *[f"| {n} | {e['n_boxes']} | {e['acc_iobb@0.5']:.2f} |" for n, e in entries.items()]]


def _write_summary(out: Path, bundle: Path, report: Path, metrics: dict, timings: dict) -> None:
    from cxrkit.deploy.runtime import choose_runtime

    lines = [
        "# cxr demo summary", "",
        f"> {RESEARCH_NOTICE}", "> All numbers below are on SYNTHETIC phantom data: they are not clinical performance.",
        "",
        f"- bundle: `{bundle}`", f"- report: `{report}`",
        f"- `cxr predict` / `cxr serve` on this CPU run it as: {choose_runtime(bundle).label()}",
        f"- phantom test mean AUROC: {_auroc_line(metrics)} (patient-clustered bootstrap)",
        *_localisation_lines(metrics),
        "", "| step | seconds |", "|---|---|", *[f"| {k} | {v} |" for k, v in timings.items()],
    ]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    (out / "timings.json").write_text(json.dumps(timings, indent=2))


def _auroc_line(metrics: dict) -> str:
    def f(v):
        return "n/a" if v is None else f"{v:.3f}"

    return (f"{f(metrics.get('mean_auroc'))} (95% CI {f(metrics.get('mean_auroc_ci_low'))}-"
            f"{f(metrics.get('mean_auroc_ci_high'))})")


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    @app.command("demo")
    def demo(
        out: Annotated[Path, typer.Option("--out", "-o", help="Folder for everything the demo writes.")] = Path("cxr-demo"),
        n: Annotated[int, typer.Option("--n", help="Phantom images to generate.")] = DemoConfig.n_images,
        epochs: Annotated[int | None, typer.Option(help="Training epochs.", show_default="the CPU demo preset's")] = None,
        seed: Annotated[int, typer.Option(help="Seed for data, split and training.")] = 0,
        n_boot: Annotated[int, typer.Option(help="Bootstrap replicates for the confidence intervals.")] = 1000,
        quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False,
    ) -> None:
        """Run the whole pipeline on synthetic phantom data (4 min 46 s on an idle 2-core VM; docs/benchmarks.md)."""
        t0 = time.perf_counter()
        res = run_demo(DemoConfig(out=out, n_images=n, epochs=epochs, seed=seed, n_boot=n_boot, quiet=quiet),
                       echo=typer.echo)
        typer.echo("")
        typer.echo(RESEARCH_NOTICE)
        typer.echo(f"phantom test mean AUROC = {_auroc_line(res.metrics)} - synthetic data, not clinical performance")
        typer.echo(f"bundle:  {res.bundle}")
        typer.echo(f"report:  {res.report}")
        typer.echo(f"summary: {res.out / 'summary.md'}  (total {time.perf_counter() - t0:.0f} s)")
