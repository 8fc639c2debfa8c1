"""`cxr tune CACHE ...` (run or continue a study) and `cxr tune report DIR` (best.json + report.html)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer


def tune_command(
    target: List[str] = typer.Argument(..., metavar="CACHE | report DIR",
                                       help="A prepared cache to run a study on, or `report DIR` for its report."),
    space: Optional[Path] = typer.Option(None, "--space", help="Search-space TOML file (docs/tune.md)."),
    trials: Optional[int] = typer.Option(None, "--trials", help="Finished (complete + pruned) trials the study should "
                                                                "hold; a rerun only adds the missing ones. With --grid "
                                                                "the default is the grid size."),
    study: str = typer.Option("cxr-tune", "--study", help="Study name inside the storage."),
    storage: Optional[str] = typer.Option(None, "--storage", help="Optuna RDB URL (postgresql://user:pw@host/db "
                                          "for teams).", show_default="sqlite:///OUT/study.db"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Study folder: trials/NNNN run folders, tune.json."),
    grid: bool = typer.Option(False, "--grid", help="Run the exact grid of the space's choices/grid values."),
    seed: int = typer.Option(0, "--seed", help="Sampler seed, and the training seed unless the space fixes one."),
    worker: int = typer.Option(0, "--worker", help="Distinct number per parallel worker (decorrelates samplers)."),
    heartbeat: int = typer.Option(60, "--heartbeat", help="Seconds between a running trial's heartbeats."),
    grace: int = typer.Option(180, "--grace", help="Seconds of silence after which a trial counts as failed."),
    retries: int = typer.Option(1, "--retries", help="Times a failed (e.g. killed) trial is rerun with its "
                                                     "parameters."),
    devices: Optional[str] = typer.Option(None, "--devices", help="GPUs to use, e.g. 0,1,2 or all: one worker "
                                          "process and one trial per GPU. Default: trials one at a time here.",
                                          show_default=False),
    slot: int = typer.Option(0, "--slot", hidden=True, help="Set by --devices for each worker it starts."),
) -> None:
    """Hyperparameter search on Optuna (TPE, median/Hyperband pruning); each trial is a `cxr train` run folder."""
    from cxrkit import RESEARCH_NOTICE
    from cxrkit.tuning.study import TuneError

    if target[0] == "report":
        if len(target) != 2:
            raise TuneError("usage: cxr tune report DIR (the folder `cxr tune --out` wrote)")
        from cxrkit.tuning.report import BEST_JSON, REPORT_HTML, write_report

        summary = write_report(Path(target[1]), storage, study if study != "cxr-tune" else None)
        typer.echo(json.dumps(summary, indent=2))
        typer.echo(f"wrote {Path(target[1]) / BEST_JSON} and {Path(target[1]) / REPORT_HTML}")
        typer.echo(RESEARCH_NOTICE)
        return
    if len(target) != 1:
        raise TuneError(f"cxr tune takes one CACHE folder, got {target}; for a report: cxr tune report DIR")
    if space is None or out is None:
        raise TuneError("cxr tune CACHE needs --space SPACE.toml and --out DIR")
    from cxrkit.tuning.space import read_space
    from cxrkit.tuning.study import TuneSpec, run_study

    parsed = read_space(space)
    if trials is None:
        if not grid:
            raise TuneError("give --trials N (the number of finished trials the study should hold)")
        trials = parsed.grid_size()
    if trials < 1:
        raise TuneError(f"--trials must be >= 1, got {trials}")
    if retries < 0 or heartbeat < 1 or grace <= heartbeat:
        raise TuneError(f"need --retries >= 0, --heartbeat >= 1 and --grace > --heartbeat; got {retries}, "
                        f"{heartbeat}, {grace}")
    if devices is not None:
        from cxrkit.tuning.devices import parse_devices, plan_workers, run_workers

        gpus = parse_devices(devices)
        argv = [str(target[0]), "--space", str(space), "--trials", str(trials), "--study", study, "--out", str(out),
                "--seed", str(seed), "--worker", str(worker), "--heartbeat", str(heartbeat), "--grace", str(grace),
                "--retries", str(retries), *(["--storage", storage] if storage else []), *(["--grid"] if grid else [])]
        if not Path("/dev/nvidiactl").exists():  # not torch.cuda: the launcher need not import torch
            typer.echo(f"note: no CUDA GPU here; the {len(gpus)} workers of --devices share the CPU", err=True)
        code = run_workers(plan_workers(gpus, argv), echo=lambda m: typer.echo(m, err=True))
        if code:
            raise typer.Exit(code)
        from cxrkit.tuning.report import load_study

        result = load_study(out, storage, study)
        _summary(result, parsed.metric, study, storage or f"sqlite:///{Path(out).resolve() / 'study.db'}")
        return
    spec = TuneSpec(cache=str(target[0]), space=parsed, out=str(out), trials=trials, study=study, storage=storage,
                    grid=grid, seed=seed, worker=worker, slot=slot, heartbeat_s=heartbeat, grace_s=grace,
                    retries=retries, progress=True)
    result = run_study(spec)
    _summary(result, parsed.metric, study, spec.storage_url())


def _summary(result, metric: str, study: str, url: str) -> None:
    from cxrkit import RESEARCH_NOTICE

    states: dict[str, int] = {}
    for t in result.trials:
        states[t.state.name.lower()] = states.get(t.state.name.lower(), 0) + 1
    typer.echo(f"study {study!r} in {url}: trials {states}")
    try:
        best = result.best_trial
        typer.echo(f"best trial {best.number}: {metric} {best.value:.4f} params {best.params}")
    except ValueError:
        typer.echo("no complete trial yet")
    typer.echo(RESEARCH_NOTICE)


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    """Add `cxr tune` (and its `cxr tune report DIR` form)."""
    app.command("tune")(tune_command)
