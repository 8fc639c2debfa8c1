"""Evaluation commands: `cxr evaluate`, `cxr ensemble`, `cxr triage-sim`, `cxr bench bootstrap`.

Thin: every command parses options, calls one library function and prints its result.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    """Add the evaluation stage's commands to the root app and the ``bench`` group."""

    @app.command("evaluate")
    def evaluate_cmd(
        bundle: Annotated[Path, typer.Argument(help="Model bundle (or ensemble bundle) directory.")],
        cache: Annotated[Path, typer.Argument(help="Cache folder made by cxr prepare.")],
        split: Annotated[str, typer.Option(help="Split to evaluate on: train, val, test, or all (every row, e.g. "
                                                "an external set prepared with --split none).")] = "test",
        out: Annotated[Path, typer.Option("--out", "-o", help="Folder for metrics.json and report.html.")] = Path("eval"),
        n_boot: Annotated[int, typer.Option(help="Patient-bootstrap replicates for the 95% CIs.")] = 1000,
        seed: Annotated[int, typer.Option(help="Seed of the bootstrap and the triage simulation.")] = 0,
        val_split: Annotated[str, typer.Option(help="Split the operating points / calibration are fitted on.")]
        = "val",
        calibrate: Annotated[Optional[str], typer.Option(help="Fit temperature or isotonic calibration on the "
                                                              "validation split and store it in the bundle.")] = None,
        compare: Annotated[Optional[Path], typer.Option(help="A second bundle: paired DeLong + bootstrap test.")]
        = None,
        adjudicated: Annotated[Optional[Path], typer.Option(help="Google 2019 adjudicated NIH labels CSV(.gz).")]
        = None,
        triage_readers: Annotated[int, typer.Option(help="Triage simulation: readers.")] = 2,
        triage_arrival_rate: Annotated[float, typer.Option(help="Triage simulation: cases per hour.")] = 20.0,
        triage_read_minutes: Annotated[float, typer.Option(help="Triage simulation: mean reading minutes.")] = 5.0,
        triage_hours: Annotated[float, typer.Option(help="Triage simulation: hours of arrivals.")] = 100.0,
        heatmaps: Annotated[bool, typer.Option(help="Heatmap gallery in the report (needs cxrkit.explain).")]
        = True,
        localisation: Annotated[bool, typer.Option(help="Localisation scores when the cache has boxes.")] = True,
        batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 64,
        device: Annotated[str, typer.Option(help="Device: cpu, cuda, cuda:1 ...")] = "cpu",
        tta: Annotated[bool, typer.Option(help="Test-time augmentation: mean over zoom and shift views (no flip; "
                                               "4x the prediction time).")] = False,
        quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False,
    ) -> None:
        """Metrics with patient-clustered 95% CIs, subgroups, calibration, triage and a self-contained HTML report."""
        import shlex

        from cxrkit import RESEARCH_NOTICE
        from cxrkit.evaluation.evaluate import evaluate

        triage = {"readers": triage_readers, "arrival_rate": triage_arrival_rate,
                  "read_minutes": triage_read_minutes, "hours": triage_hours}
        command = shlex.join(["cxr", *sys.argv[1:]]) if sys.argv and sys.argv[0].endswith("cxr") else None
        m = evaluate(bundle, cache, split, out, n_boot=n_boot, seed=seed, val_split=val_split, calibrate=calibrate,
                     compare=compare, adjudicated=adjudicated, triage=triage, heatmaps=heatmaps,
                     localisation=localisation, batch_size=batch_size, progress=not quiet, device=device,
                     command=command, tta=tta)
        lo, hi = m["mean_auroc_ci_low"], m["mean_auroc_ci_high"]
        f = (lambda v: "n/a" if v is None else f"{v:.3f}")  # noqa: E731
        typer.echo(f"mean AUROC {f(m['mean_auroc'])} (95% CI {f(lo)}-{f(hi)}) on {m['data']['n_images']} "
                   f"{split} images; wrote {out / 'metrics.json'} and {out / 'report.html'}")
        if m["data"]["is_phantom"]:
            typer.echo("synthetic data — not clinical performance")
        typer.echo(RESEARCH_NOTICE)

    @app.command("ensemble")
    def ensemble_cmd(
        out: Annotated[Path, typer.Option("--out", "-o", help="Ensemble bundle directory to write.")],
        bundles: Annotated[Optional[list[Path]], typer.Argument(help="Two or more member bundles.")] = None,
        from_tune: Annotated[Optional[Path], typer.Option("--from-tune", help="A `cxr tune --out` folder: use "
                                                          "its top-k complete trials as members.")] = None,
        top_k: Annotated[int, typer.Option("--top-k", help="Members taken from --from-tune, best first.")] = 3,
        method: Annotated[str, typer.Option(help="Combination: mean, weighted, vote or max.")] = "mean",
        cache: Annotated[Optional[Path], typer.Option(help="Cache whose validation split fits weights and "
                                                          "thresholds.")] = None,
        overwrite: Annotated[bool, typer.Option(help="Replace a non-empty OUT.")] = False,
        device: Annotated[str, typer.Option(help="Device for the validation predictions.")] = "cpu",
        quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False,
    ) -> None:
        """Combine bundles into one ensemble bundle, usable everywhere a bundle is."""
        from cxrkit.bundle import read_bundle_config
        from cxrkit.evaluation.ensembles import EnsembleError, build_ensemble

        if from_tune is not None:
            if bundles:
                raise EnsembleError("give member bundles or --from-tune DIR, not both")
            from cxrkit.tuning.report import top_trials

            picked = top_trials(from_tune, top_k)
            for t in picked:
                typer.echo(f"trial {t['number']}: value {t['value']:.4f} params {t['params']}")
            bundles = [Path(t["bundle"]) for t in picked]
        elif not bundles:
            raise EnsembleError("give two or more member bundles, or --from-tune DIR --top-k K")

        path = build_ensemble(bundles, out, method=method, cache=cache, progress=not quiet, overwrite=overwrite)
        cfg = read_bundle_config(path)
        w = ", ".join(f"{x:.3f}" for x in cfg["ensemble"]["weights"])
        typer.echo(f"ensemble of {len(bundles)} bundles ({method}, weights {w}, thresholds "
                   f"{cfg['threshold_policy']}) written to {path}")

    @app.command("triage-sim")
    def triage_cmd(
        scores: Annotated[Optional[Path], typer.Option(help="CSV with columns score and abnormal (0/1), or .npz "
                                                           "with arrays score and abnormal.")] = None,
        bundle: Annotated[Optional[Path], typer.Option(help="Bundle to score --cache with instead of --scores.")]
        = None,
        cache: Annotated[Optional[Path], typer.Option(help="Cache to score with --bundle.")] = None,
        split: Annotated[str, typer.Option(help="Cache split to score.")] = "test",
        readers: Annotated[int, typer.Option(help="Radiologists reading in parallel.")] = 2,
        arrival_rate: Annotated[float, typer.Option(help="Poisson arrivals per hour.")] = 20.0,
        read_minutes: Annotated[float, typer.Option(help="Mean reading time per case (minutes).")] = 5.0,
        read_dist: Annotated[str, typer.Option(help="Reading-time distribution: lognormal or exponential.")] = "lognormal",
        hours: Annotated[float, typer.Option(help="Hours of arrivals simulated.")] = 100.0,
        seed: Annotated[int, typer.Option(help="Simulation seed.")] = 0,
        out: Annotated[Path, typer.Option("--out", "-o", help="Folder for triage.json and triage.png.")] = Path("triage"),
    ) -> None:
        """Reading-worklist simulation: FIFO vs priority by abnormality score (abnormal-case turnaround)."""
        import numpy as np

        from cxrkit.evaluation.triage import TriageError, simulate_worklist, triage_figure

        if (scores is None) == (bundle is None):
            raise TriageError("give either --scores FILE or --bundle B with --cache C")
        if scores is not None:
            s, ab = _read_scores(scores)
        else:
            if cache is None:
                raise TriageError("--bundle needs --cache to score")
            from cxrkit.bundle import load_bundle
            from cxrkit.data import open_cache
            from cxrkit.evaluation.predict import predict_rows

            c = open_cache(cache)
            rows = c.rows(split)
            s = predict_rows(load_bundle(bundle), c, rows)["abnormality"]
            ab = (np.nan_to_num(c.labels(rows), nan=0.0) >= 0.5).any(axis=1)
        res = simulate_worklist(s, ab, readers=readers, arrival_rate=arrival_rate, read_minutes=read_minutes,
                                hours=hours, read_dist=read_dist, seed=seed)
        out.mkdir(parents=True, exist_ok=True)
        (out / "triage.json").write_text(json.dumps(res.to_dict(), indent=1))
        triage_figure(res, out / "triage.png")
        typer.echo(f"abnormal-case turnaround, FIFO -> priority: mean {res.fifo_mean:.1f} -> {res.priority_mean:.1f}"
                   f" min ({res.mean_reduction_pct:.1f}% less), p90 {res.fifo_p90:.1f} -> {res.priority_p90:.1f} min "
                   f"({res.p90_reduction_pct:.1f}% less); {res.n_cases} cases, {res.n_abnormal} abnormal. "
                   f"Wrote {out / 'triage.json'} and {out / 'triage.png'}")

    @groups["bench"].command("bootstrap")
    def bench_bootstrap_cmd(
        n_images: Annotated[int, typer.Option(help="Synthetic test images.")] = 22000,
        n_classes: Annotated[int, typer.Option(help="Findings.")] = 14,
        n_boot: Annotated[int, typer.Option(help="Bootstrap replicates.")] = 1000,
        seed: Annotated[int, typer.Option(help="Seed.")] = 0,
    ) -> None:
        """Time the patient-clustered AUROC/AUPRC bootstrap (goal: 22,000 x 14 x 1,000 in < 60 s on 2 cores)."""
        from cxrkit.evaluation.bench import bench_bootstrap

        typer.echo(json.dumps(bench_bootstrap(n_images, n_classes, n_boot, seed=seed), indent=1))


def _read_scores(path: Path):
    import numpy as np
    import pandas as pd

    from cxrkit.evaluation.triage import TriageError

    if not path.is_file():
        raise TriageError(f"scores file {path} not found")
    if path.suffix == ".npz":
        with np.load(path) as z:
            if not {"score", "abnormal"} <= set(z.files):
                raise TriageError(f"{path} must hold arrays 'score' and 'abnormal'")
            return z["score"], z["abnormal"].astype(bool)
    try:
        t = pd.read_csv(path)
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise TriageError(f"{path} is not a readable CSV: {exc}") from exc
    if not {"score", "abnormal"} <= set(t.columns):
        raise TriageError(f"{path} needs columns 'score' and 'abnormal' (0/1); it has {list(t.columns)}")
    return t["score"].to_numpy(float), t["abnormal"].to_numpy(float) >= 0.5
