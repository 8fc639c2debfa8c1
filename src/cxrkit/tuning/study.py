"""The Optuna study behind `cxr tune`: each trial is an ordinary `cxr train` run folder (with its bundle) under
``OUT/trials/NNNN``; the per-epoch validation metric is reported to Optuna through the training engine's
``on_epoch`` hook so the pruner can stop a bad trial after any epoch (it still ends with its best epoch's bundle)."""
from __future__ import annotations

import json
import math
import os
import socket
import time
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
    slot: int = 0  # position of this process in a `--devices` launch (decorrelates the samplers of one machine)
    heartbeat_s: int = 60
    grace_s: int = 180
    enqueue: tuple[dict, ...] = ()
    retries: int = 1  # a failed (e.g. killed) trial is rerun this many times with the same parameters
    progress: bool = False  # a line on stderr per finished trial

    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{Path(self.out).resolve() / 'study.db'}"


def _optuna():
    try:
        import optuna
    except ImportError as exc:
        raise TuneError("`cxr tune` needs Optuna: pip install 'cxrkit[tune]'") from exc
    return optuna


def make_storage(url: str, heartbeat_s: int = 60, grace_s: int = 180, retries: int = 1):
    """Optuna's RDB storage with a heartbeat: a killed worker's running trial is marked FAIL once it has been
    silent for ``grace_s`` (checked before each new trial of any worker) and rerun ``retries`` times with its
    parameters (``RetryFailedTrialCallback``). SQLite waits up to 60 s for a lock instead of failing at once, so
    several processes can share one file; other servers get connection health checks."""
    import warnings

    optuna = _optuna()
    url = sqlalchemy_url(url)
    engine_kwargs: dict = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    last: Exception | None = None
    for attempt in range(5):  # workers starting together race to create the schema; the loser retries
        try:
            with warnings.catch_warnings():  # heartbeat and retry are "experimental" in Optuna but are what we use
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=retries) if retries > 0 else None
                return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat_s,
                                                  grace_period=grace_s, heartbeat_stale_trial_callback=retry)
        except Exception as exc:  # sqlalchemy raises many kinds (bad dialect, unreachable server, missing driver)
            last = exc
            if not _is_race(exc):
                break
            time.sleep(0.2 * (attempt + 1))
    raise TuneError(f"cannot open study storage {url!r}: {last}; use sqlite:///PATH/study.db or "
                    "postgresql://user:password@host/db (needs psycopg: pip install 'cxrkit[tune]')") from last


def sqlalchemy_url(url: str) -> str:
    """``postgresql://...`` means SQLAlchemy's psycopg2 driver; cxrkit[tune] installs psycopg 3, so use that when
    psycopg2 is absent (the URL a user types keeps working either way)."""
    if url.startswith("postgresql://"):
        import importlib.util

        if importlib.util.find_spec("psycopg2") is None and importlib.util.find_spec("psycopg") is not None:
            return "postgresql+psycopg://" + url[len("postgresql://"):]
    return url


def _is_race(exc: Exception) -> bool:
    text = str(exc).lower()
    return any(k in text for k in ("already exists", "database is locked", "unique constraint", "duplicate key"))


def make_pruner(space: SearchSpace):
    """``median`` (default): prune a trial worse than the median of earlier trials at the same epoch, after
    ``pruner_startup_trials`` and ``pruner_warmup_epochs``. ``sha`` (asynchronous successive halving): a trial goes
    on past epochs 1, 3, 9, ... only while it is in the top third of the trials that reached that epoch; no
    start-up phase, so it stops bad trials from the first ones on (docs/tune.md, "Pruning cost"). ``hyperband``
    runs several SHA brackets with different first rungs, hedging against a metric that ranks late."""
    optuna = _optuna()
    if space.pruner == "none":
        return optuna.pruners.NopPruner()
    if space.pruner == "hyperband":
        epochs = int(space.fixed.get("epochs", 10))
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(epochs, 1), reduction_factor=3)
    if space.pruner == "sha":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3, min_early_stopping_rate=0)
    # steps are epochs done: a step below warm-up + 1 is one of the first `pruner_warmup_epochs` epochs
    return optuna.pruners.MedianPruner(n_startup_trials=space.pruner_startup_trials,
                                       n_warmup_steps=space.pruner_warmup_epochs + 1)


def _sampler(spec: TuneSpec, n_existing: int):
    """Seeded from (seed, worker, device slot, trials already in the study): a fresh study replays exactly, and a
    rerun or a second worker does not redraw the first run's samples."""
    optuna = _optuna()
    seed = int(np.random.SeedSequence([spec.seed, spec.worker, spec.slot, n_existing]).generate_state(1)[0])
    if spec.grid:
        return optuna.samplers.GridSampler(spec.space.grid(), seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def finished_states():
    optuna = _optuna()
    return (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


def open_study(spec: TuneSpec):
    """Create the study or load it (same name + storage): rerunning `cxr tune` continues it."""
    optuna = _optuna()
    storage = make_storage(spec.storage_url(), spec.heartbeat_s, spec.grace_s, spec.retries)
    for attempt in range(5):
        try:
            study = optuna.create_study(storage=storage, study_name=spec.study, load_if_exists=True,
                                        direction=spec.space.direction, pruner=make_pruner(spec.space))
            break
        except ValueError as exc:  # e.g. an existing study with another direction
            raise TuneError(f"cannot use study {spec.study!r} in {spec.storage_url()}: {exc}") from exc
        except Exception as exc:  # two workers creating the same study at once: the loser loads it
            if not _is_race(exc) or attempt == 4:
                raise TuneError(f"cannot open study {spec.study!r} in {spec.storage_url()}: {exc}") from exc
            time.sleep(0.2 * (attempt + 1))
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
    data = {"seed": spec.seed, "quiet": True, "export": False, **spec.space.fixed, **params,
            **spec.space.derived(params), "cache": str(spec.cache),
            "out": str(run_dir), "select": spec.space.select}
    return TrainConfig.from_dict(data).validate()


def run_study(spec: TuneSpec):
    """Run trials until the study holds ``spec.trials`` finished (complete or pruned) trials; returns the study.

    Any number of workers (processes, machines) may run this on one study at once: before each trial a worker
    fails the trials whose worker stopped sending heartbeats (their parameters are queued again), and it stops when
    the finished trials plus those other workers are running reach the target, so a study does not overshoot."""
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
    metric = spec.space.metric
    where = {"worker": spec.worker, "slot": spec.slot, "host": socket.gethostname(), "pid": os.getpid(),
             "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}

    def objective(trial) -> float:
        from cxrkit.fileio import atomic_write_json
        from cxrkit.training import train

        params = {p.name: p.suggest(trial, grid=spec.grid) for p in spec.space.params}
        run_dir = out / TRIALS / f"{trial.number:04d}"
        trial.set_user_attr("run_dir", str(run_dir.relative_to(out)))
        trial.set_user_attr("worker", where)
        if spec.space.derived(params):
            trial.set_user_attr("derived", spec.space.derived(params))
        cfg = trial_config(spec, params, run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(run_dir / "trial.json", {"number": trial.number, "params": params, **where})
        pruned: list[int] = []

        def on_epoch(record: dict) -> bool:
            value = record.get(metric)
            if value is None or not math.isfinite(value):
                return False
            # the step is the number of epochs done (1 after the first), the resource Hyperband/SHA count
            trial.report(float(value), int(record["epoch"]) + 1)
            if trial.should_prune():
                pruned.append(int(record["epoch"]))
                return True
            return False

        cpu0, wall0 = time.process_time(), time.monotonic()
        result = train(cfg, on_epoch=on_epoch)
        # compute spent, for cost comparisons (CPU s of this process: all its threads; wall s)
        trial.set_user_attr("cpu_s", round(time.process_time() - cpu0, 2))
        trial.set_user_attr("wall_s", round(time.monotonic() - wall0, 2))
        if result.bundle_dir is not None:
            trial.set_user_attr("bundle", str(Path(result.bundle_dir).relative_to(out)))
        trial.set_user_attr("epochs_run", int(result.epochs_run))
        if pruned:
            trial.set_user_attr("pruned_after_epoch", pruned[0])
            raise optuna.TrialPruned(f"pruned after epoch {pruned[0] + 1}")
        return _best_value(result.history, metric, spec.space.direction)

    while True:
        fail_stale_trials(study, spec.grace_s)
        trials = study.get_trials(deepcopy=False)
        finished = sum(t.state in finished_states() for t in trials)
        running = sum(t.state == optuna.trial.TrialState.RUNNING for t in trials)
        if finished + running >= spec.trials:
            break
        if spec.grid and finished >= spec.space.grid_size():
            break
        # one trial per call: optimize() runs the heartbeat thread and the stale-trial check around each trial;
        # a trial that raises a cxrkit error (e.g. NonFiniteLossError) is recorded as FAIL and the study goes on
        study.optimize(objective, n_trials=1, catch=(CxrError,), gc_after_trial=True,
                       callbacks=[_progress_line(spec)] if spec.progress else None)
    return study


def _progress_line(spec: TuneSpec):
    import sys

    def callback(study, trial) -> None:
        trials = study.get_trials(deepcopy=False)
        finished = sum(t.state in finished_states() for t in trials)
        value = f" {spec.space.metric} {trial.value:.4f}" if trial.value is not None else ""
        print(f"trial {trial.number} {trial.state.name.lower()}{value} after {trial.user_attrs.get('epochs_run', 0)}"
              f" epochs ({trial.duration.total_seconds() if trial.duration else 0:.0f} s); study {finished}/"
              f"{spec.trials} finished", file=sys.stderr, flush=True)

    return callback


def fail_stale_trials(study, grace_s: int) -> list[int]:
    """Mark FAIL the RUNNING trials no live worker owns and queue their parameters again (the storage's retry
    callback). Optuna's own check covers trials with a stale heartbeat; a worker killed between creating a trial
    and its first heartbeat leaves one with none, failed here once it is older than ``grace_s``. Returns the
    numbers of the trials failed here (not Optuna's)."""
    import datetime as dt
    import warnings

    optuna = _optuna()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    storage = study._storage
    cutoff = dt.datetime.now() - dt.timedelta(seconds=grace_s)
    failed = []
    backend = getattr(storage, "_backend", storage)  # a Study wraps its RDBStorage in Optuna's cache
    for trial_id, number in _running_without_heartbeat(backend, study._study_id, cutoff):
        try:
            if not storage.set_trial_state_values(trial_id, state=optuna.trial.TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:  # another worker got there first
            continue
        failed.append(number)
        callback = backend.get_heartbeat_stale_trial_callback()
        if callback is not None:
            callback(study, storage.get_trial(trial_id))
    return failed


def _running_without_heartbeat(storage, study_id: int, cutoff) -> list[tuple[int, int]]:
    try:  # Optuna's RDB models are internal; if they change, Optuna's heartbeat check alone remains
        from optuna.storages._rdb import models
        from optuna.storages._rdb.storage import _create_scoped_session
        from optuna.trial import TrialState

        with _create_scoped_session(storage.scoped_session) as session:
            # populate_existing: Optuna's sessions keep loaded rows (no expire on commit); read them afresh
            rows = (session.query(models.TrialModel).execution_options(populate_existing=True)
                    .filter(models.TrialModel.state == TrialState.RUNNING)
                    .filter(models.TrialModel.study_id == study_id).all())
            return [(r.trial_id, r.number) for r in rows
                    if not r.heartbeats and r.datetime_start is not None and r.datetime_start < cutoff]
    except (ImportError, AttributeError):
        return []


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


__all__ = ["TuneError", "TuneSpec", "fail_stale_trials", "make_pruner", "make_storage", "open_study", "run_study",
           "trial_config"]
