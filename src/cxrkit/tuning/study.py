"""The Optuna study behind `cxr tune`: each trial is an ordinary `cxr train` run folder (with its bundle) under
``OUT/trials/NNNN``; the per-epoch validation metric is reported to Optuna through the training engine's
``on_epoch`` hook so the pruner can stop a bad trial after any epoch (it still ends with its best epoch's bundle)."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cxrkit.data.errors import CxrError
from cxrkit.tuning.space import SearchSpace, SpaceError

TUNE_JSON = "tune.json"
TRIALS = "trials"


class TuneError(CxrError):
    """A study could not be created, loaded or run as asked."""


@dataclass
class TuneSpec:
    cache: str
    space: SearchSpace
    out: str
    trials: int
    study: str = "cxr-tune"
    storage: str | None = None  # default sqlite:///OUT/study.db
    grid: bool = False
    seed: int = 0
    worker: int = 0
    heartbeat_s: int = 60
    grace_s: int = 180
    enqueue: tuple[dict, ...] = ()

    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{Path(self.out).resolve() / 'study.db'}"


def _optuna():
    try:
        import optuna
    except ImportError as exc:
        raise TuneError("`cxr tune` needs Optuna: pip install 'cxrkit[tune]'") from exc
    return optuna


def make_storage(url: str, heartbeat_s: int = 60, grace_s: int = 180):
    """Optuna's RDB storage with a heartbeat: a killed worker's running trial is marked FAIL once it has been
    silent for ``grace_s``, when any worker starts its next trial."""
    import warnings

    optuna = _optuna()
    try:
        with warnings.catch_warnings():  # the heartbeat is "experimental" in Optuna 5 but is what we rely on
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(url, heartbeat_interval=heartbeat_s, grace_period=grace_s)
    except Exception as exc:  # sqlalchemy raises many kinds (bad dialect, unreachable server, missing driver)
        raise TuneError(f"cannot open study storage {url!r}: {exc}; use sqlite:///PATH/study.db or "
                        "postgresql://user:password@host/db") from exc


def make_pruner(space: SearchSpace):
    """Median pruning by default: with tens of trials of ~10 epochs it compares each trial with all the earlier
    ones at the same epoch; Hyperband splits the trials into brackets and pays off in larger studies."""
    optuna = _optuna()
    if space.pruner == "none":
        return optuna.pruners.NopPruner()
    if space.pruner == "hyperband":
        epochs = int(space.fixed.get("epochs", 10))
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(epochs, 1), reduction_factor=3)
    return optuna.pruners.MedianPruner(n_startup_trials=space.pruner_startup_trials,
                                       n_warmup_steps=space.pruner_warmup_epochs)


def _sampler(spec: TuneSpec, n_existing: int):
    """Seeded from (seed, worker, trials already in the study): a fresh study replays exactly, and a rerun or a
    second worker does not redraw the first run's samples."""
    optuna = _optuna()
    seed = int(np.random.SeedSequence([spec.seed, spec.worker, n_existing]).generate_state(1)[0])
    if spec.grid:
        return optuna.samplers.GridSampler(spec.space.grid(), seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def finished_states():
    optuna = _optuna()
    return (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


def open_study(spec: TuneSpec):
    """Create the study or load it (same name + storage): rerunning `cxr tune` continues it."""
    optuna = _optuna()
    storage = make_storage(spec.storage_url(), spec.heartbeat_s, spec.grace_s)
    try:
        study = optuna.create_study(storage=storage, study_name=spec.study, load_if_exists=True,
                                    direction=spec.space.direction, pruner=make_pruner(spec.space))
    except ValueError as exc:  # e.g. an existing study with another direction
        raise TuneError(f"cannot use study {spec.study!r} in {spec.storage_url()}: {exc}") from exc
    space = spec.space.to_dict()
    stored = study.user_attrs.get("space")
    if stored is None:
        study.set_user_attr("space", space)
        study.set_user_attr("grid", spec.grid)
    elif stored != space or bool(study.user_attrs.get("grid")) != spec.grid:
        raise SpaceError(f"study {spec.study!r} was started with a different search space (or --grid setting); "
                         "rerun with the original space file or choose a new --study")
    study.sampler = _sampler(spec, len(study.trials))
    return study


def trial_config(spec: TuneSpec, params: dict[str, Any], run_dir: Path):
    from cxrkit.training.config import TrainConfig

    # trials skip the ONNX export: only the chosen one is deployed (`cxr export BUNDLE --int8` then)
    data = {"seed": spec.seed, "quiet": True, "export": False, **spec.space.fixed, **params, "cache": str(spec.cache),
            "out": str(run_dir), "select": spec.space.select}
    return TrainConfig.from_dict(data).validate()


def run_study(spec: TuneSpec):
    """Run trials until the study holds ``spec.trials`` finished (complete or pruned) trials; returns the study."""
    from cxrkit.data.cache import open_cache

    optuna = _optuna()
    open_cache(spec.cache)  # a wrong cache fails here with a CacheError, not as N failed trials
    out = Path(spec.out)
    out.mkdir(parents=True, exist_ok=True)
    if spec.grid:
        spec.space.grid()  # raises SpaceError for a parameter without a finite grid
    study = open_study(spec)
    _write_tune_json(spec)
    for params in spec.enqueue:
        study.enqueue_trial(params, skip_if_exists=True)
    done = sum(t.state in finished_states() for t in study.trials)
    remaining = spec.trials - done
    if remaining <= 0:
        return study
    metric = spec.space.metric

    def objective(trial) -> float:
        from cxrkit.training import train

        params = {p.name: p.suggest(trial, grid=spec.grid) for p in spec.space.params}
        run_dir = out / TRIALS / f"{trial.number:04d}"
        trial.set_user_attr("run_dir", str(run_dir.relative_to(out)))
        cfg = trial_config(spec, params, run_dir)
        pruned: list[int] = []

        def on_epoch(record: dict) -> bool:
            value = record.get(metric)
            if value is None or not math.isfinite(value):
                return False
            trial.report(float(value), int(record["epoch"]))
            if trial.should_prune():
                pruned.append(int(record["epoch"]))
                return True
            return False

        result = train(cfg, on_epoch=on_epoch)
        if result.bundle_dir is not None:
            trial.set_user_attr("bundle", str(Path(result.bundle_dir).relative_to(out)))
        trial.set_user_attr("epochs_run", int(result.epochs_run))
        if pruned:
            trial.set_user_attr("pruned_after_epoch", pruned[0])
            raise optuna.TrialPruned(f"pruned after epoch {pruned[0] + 1}")
        return _best_value(result.history, metric, spec.space.direction)

    callback = optuna.study.MaxTrialsCallback(spec.trials, states=finished_states())
    # no catch: a failing trial (e.g. NonFiniteLossError) is recorded as FAIL and the study goes on
    study.optimize(objective, n_trials=remaining, callbacks=[callback], catch=(CxrError,), gc_after_trial=True)
    return study


def _best_value(history: Path, metric: str, direction: str) -> float:
    values = [json.loads(line).get(metric) for line in Path(history).read_text().splitlines() if line.strip()]
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        raise TuneError(f"the trial's history {history} holds no finite {metric}; check the validation split")
    return max(values) if direction == "maximize" else min(values)


def _write_tune_json(spec: TuneSpec) -> None:
    from cxrkit.fileio import atomic_write_json

    atomic_write_json(Path(spec.out) / TUNE_JSON, {"study": spec.study, "storage": spec.storage_url(),
                                                   "cache": str(spec.cache), "metric": spec.space.metric,
                                                   "direction": spec.space.direction, "grid": spec.grid})


__all__ = ["TuneError", "TuneSpec", "make_pruner", "make_storage", "open_study", "run_study", "trial_config"]
