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
    spec = TuneSpec(cache=str(target[0]), space=parsed, out=str(out), trials=trials, study=study, storage=storage,
                    grid=grid, seed=seed, worker=worker, heartbeat_s=heartbeat, grace_s=grace)
    result = run_study(spec)
    states: dict[str, int] = {}
    for t in result.trials:
        states[t.state.name.lower()] = states.get(t.state.name.lower(), 0) + 1
    typer.echo(f"study {study!r} in {spec.storage_url()}: trials {states}")
    try:
        best = result.best_trial
        typer.echo(f"best trial {best.number}: {parsed.metric} {best.value:.4f} params {best.params}")
    except ValueError:
        typer.echo("no complete trial yet")
    typer.echo(RESEARCH_NOTICE)


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    """Add `cxr tune` (and its `cxr tune report DIR` form)."""
    app.command("tune")(tune_command)
