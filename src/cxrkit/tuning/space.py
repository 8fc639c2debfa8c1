"""The search-space file of `cxr tune` (TOML, docs/tune.md): distributions over TrainConfig keys, fixed keys, the
study's metric and pruner. Everything is checked when the file is read, before any trial trains."""
from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from cxrkit.data.errors import CxrError
from cxrkit.training.config import ConfigError, TrainConfig

# set by `cxr tune` for every trial, never by the space file
RESERVED = frozenset({"cache", "out", "resume", "select"})
METRICS = {"val_mean_auroc": ("maximize", "auroc"), "val_loss": ("minimize", "loss")}
PRUNERS = ("median", "hyperband", "sha", "none")
KINDS = ("float", "int", "categorical")
MAX_INT_GRID = 1000


class SpaceError(CxrError):
    """A search-space file is invalid."""


@dataclass(frozen=True)
class Param:
    """One searched TrainConfig key."""

    name: str
    kind: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple = ()
    grid: tuple = ()

    def suggest(self, trial, grid: bool = False) -> Any:
        if grid:
            return trial.suggest_categorical(self.name, list(self.grid_values()))
        if self.kind == "categorical":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.name, float(self.low), float(self.high), step=self.step, log=self.log)

    def grid_values(self) -> tuple:
        """The values --grid runs: ``grid`` if given, else the choices, else every int of an int range."""
        if self.grid:
            return self.grid
        if self.kind == "categorical":
            return self.choices
        if self.kind == "int" and not self.log:
            step = int(self.step or 1)
            values = tuple(range(int(self.low), int(self.high) + 1, step))
            if len(values) <= MAX_INT_GRID:
                return values
        raise SpaceError(f"parameter {self.name!r} ({self.kind} range) has no finite grid: give it "
                         "`grid = [...]` (or `choices`) to use --grid")

    def examples(self) -> tuple:
        """Values that must all make a valid TrainConfig (the range ends, every choice and grid value)."""
        ends = () if self.kind == "categorical" else (self.low, self.high)
        return tuple(ends) + self.choices + self.grid


@dataclass(frozen=True)
class SearchSpace:
    params: tuple[Param, ...]
    fixed: dict = field(default_factory=dict)
    metric: str = "val_mean_auroc"
    pruner: str = "median"
    pruner_startup_trials: int = 3
    pruner_warmup_epochs: int = 1
    effective_batch: int | None = None  # batch_size x accum_steps held fixed: accum_steps follows batch_size

    @property
    def direction(self) -> str:
        return METRICS[self.metric][0]

    @property
    def select(self) -> str:
        return METRICS[self.metric][1]

    def derived(self, params: dict[str, Any]) -> dict[str, Any]:
        """Keys that follow from a trial's parameters: ``accum_steps`` when the study fixes the effective batch."""
        if self.effective_batch is None:
            return {}
        batch = int(params.get("batch_size", self.fixed.get("batch_size", TrainConfig.batch_size)))
        return {"accum_steps": self.effective_batch // batch}

    def grid(self) -> dict[str, list]:
        return {p.name: list(p.grid_values()) for p in self.params}

    def grid_size(self) -> int:
        n = 1
        for values in self.grid().values():
            n *= len(values)
        return n

    def to_dict(self) -> dict:
        """A plain, JSON-comparable form (stored on the study so a rerun with a changed file is refused)."""
        extra = {} if self.effective_batch is None else {"effective_batch": self.effective_batch}  # older studies match
        return json.loads(json.dumps({
            "params": [{k: getattr(p, k) for k in ("name", "kind", "low", "high", "log", "step", "choices", "grid")}
                       for p in self.params],
            "fixed": self.fixed, "metric": self.metric, "pruner": self.pruner,
            "pruner_startup_trials": self.pruner_startup_trials, "pruner_warmup_epochs": self.pruner_warmup_epochs,
            **extra}))


def read_space(path: str | Path) -> SearchSpace:
    """Read and validate a search-space TOML file; raises :class:`SpaceError` saying what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise SpaceError(f"search-space file {path} does not exist")
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise SpaceError(f"could not parse search-space file {path}: {exc}") from exc
    try:
        return parse_space(data)
    except SpaceError as exc:
        raise SpaceError(f"{path}: {exc}") from None


def parse_space(data: dict) -> SearchSpace:
    unknown_tables = sorted(set(data) - {"study", "fixed", "params"})
    if unknown_tables:
        raise SpaceError(f"unknown tables {unknown_tables}; a space file has [study], [fixed] and [params]")
    known = {f.name for f in fields(TrainConfig)}
    study = dict(data.get("study", {}))
    fixed = dict(data.get("fixed", {}))
    raw = dict(data.get("params", {}))
    if not raw:
        raise SpaceError("no [params] to search; add at least one, e.g. lr = {type = \"float\", low = 1e-4, "
                         "high = 1e-2, log = true}")
    for where, keys in (("[fixed]", fixed), ("[params]", raw)):
        bad = sorted(set(keys) - known)
        if bad:
            raise SpaceError(f"{where} has unknown TrainConfig keys {bad}; known keys: {sorted(known - RESERVED)}")
        reserved = sorted(set(keys) & RESERVED)
        if reserved:
            raise SpaceError(f"{where} sets {reserved}, which `cxr tune` sets itself (cache/out per trial, select "
                             "from [study] metric); remove them")
    both = sorted(set(fixed) & set(raw))
    if both:
        raise SpaceError(f"keys {both} are both fixed and searched; keep each in one table")
    params = tuple(_param(name, spec) for name, spec in raw.items())

    unknown_study = sorted(set(study) - {"metric", "pruner", "pruner_startup_trials", "pruner_warmup_epochs",
                                         "effective_batch"})
    if unknown_study:
        raise SpaceError(f"[study] has unknown keys {unknown_study}; known: metric, pruner, pruner_startup_trials, "
                         "pruner_warmup_epochs, effective_batch")
    metric = study.get("metric", "val_mean_auroc")
    if metric not in METRICS:
        raise SpaceError(f"[study] metric must be one of {sorted(METRICS)}, got {metric!r}")
    pruner = study.get("pruner", "median")
    if pruner not in PRUNERS:
        raise SpaceError(f"[study] pruner must be one of {PRUNERS}, got {pruner!r}")
    counts = {}
    for key, default in (("pruner_startup_trials", 3), ("pruner_warmup_epochs", 1)):
        value = study.get(key, default)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise SpaceError(f"[study] {key} must be an integer >= 0, got {value!r}")
        counts[key] = value
    effective_batch = _effective_batch(study.get("effective_batch"), fixed, params)
    space = SearchSpace(params, fixed, metric, pruner, **counts, effective_batch=effective_batch)
    _check_configs(space)
    return space


def _param(name: str, spec: Any) -> Param:
    if isinstance(spec, list):  # shorthand: a list is a categorical
        spec = {"type": "categorical", "choices": spec}
    if not isinstance(spec, dict):
        raise SpaceError(f"parameter {name!r} must be a table ({{type = ..., ...}}) or a list of choices, got {spec!r}")
    spec = dict(spec)
    kind = spec.pop("type", "categorical" if "choices" in spec else None)
    if kind not in KINDS:
        raise SpaceError(f"parameter {name!r}: type must be one of {KINDS}, got {kind!r}")
    allowed = {"categorical": {"choices", "grid"}, "int": {"low", "high", "log", "step", "grid"},
               "float": {"low", "high", "log", "step", "grid"}}[kind]
    extra = sorted(set(spec) - allowed)
    if extra:
        raise SpaceError(f"parameter {name!r} ({kind}) has unknown keys {extra}; allowed: {sorted(allowed)}")
    grid = tuple(spec.get("grid", ()))
    if kind == "categorical":
        choices = tuple(spec.get("choices", ()))
        if not choices:
            raise SpaceError(f"parameter {name!r}: categorical needs a non-empty `choices` list")
        for c in choices + grid:
            if not isinstance(c, (str, int, float, bool)):
                raise SpaceError(f"parameter {name!r}: choices must be strings, numbers or booleans, got {c!r}")
        return Param(name, kind, choices=choices, grid=grid)
    low, high, log, step = spec.get("low"), spec.get("high"), bool(spec.get("log", False)), spec.get("step")
    num = (int, float) if kind == "float" else (int,)
    for label, v in (("low", low), ("high", high)):
        if not isinstance(v, num) or isinstance(v, bool):
            raise SpaceError(f"parameter {name!r}: {kind} needs a numeric `{label}`, got {v!r}")
    if not low < high:
        raise SpaceError(f"parameter {name!r}: low ({low}) must be below high ({high})")
    if log and low <= 0:
        raise SpaceError(f"parameter {name!r}: a log range needs low > 0, got {low}")
    if step is not None and (log or not isinstance(step, num) or step <= 0):
        raise SpaceError(f"parameter {name!r}: step must be a positive {kind} and cannot be combined with log")
    return Param(name, kind, low=low, high=high, log=log, step=step, grid=grid)


def _effective_batch(value: Any, fixed: dict, params: tuple[Param, ...]) -> int | None:
    """``[study] effective_batch``: batch size x accumulation searched at a fixed effective batch (a larger
    micro-batch means fewer accumulation steps, the same optimiser steps per epoch), so the search compares
    memory/speed trade-offs, not different optimisation problems."""
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise SpaceError(f"[study] effective_batch must be an integer >= 1, got {value!r}")
    searched = {p.name: p for p in params}
    if "accum_steps" in fixed or "accum_steps" in searched:
        raise SpaceError("[study] effective_batch sets accum_steps (effective_batch / batch_size); remove "
                         "accum_steps from [fixed]/[params]")
    if "batch_size" in searched:
        p = searched["batch_size"]
        if p.kind == "float":
            raise SpaceError("batch_size must be an int or a list of ints with effective_batch")
        if p.kind == "int":
            sizes = tuple(range(int(p.low), int(p.high) + 1, int(p.step or 1)))
        else:
            sizes = p.choices + p.grid
    else:
        sizes = (fixed.get("batch_size", TrainConfig.batch_size),)
    bad = [b for b in sizes if not isinstance(b, int) or isinstance(b, bool) or b < 1 or value % b]
    if bad:
        raise SpaceError(f"[study] effective_batch = {value} is not a whole multiple of batch_size {bad}; choose "
                         f"batch sizes that divide it (e.g. choices = [8, 16, 32] for 32)")
    return value


def _check_configs(space: SearchSpace) -> None:
    """Every range end and choice must make a valid TrainConfig together with the fixed keys."""
    base = {**space.fixed, "cache": "<cache>", "out": "<out>"}
    try:
        TrainConfig.from_dict(base).validate()
    except ConfigError as exc:
        raise SpaceError(f"[fixed]: {exc}") from None
    for p in space.params:
        for value in p.examples():
            try:
                TrainConfig.from_dict({**base, p.name: value, **space.derived({p.name: value})}).validate()
            except (ConfigError, TypeError, ValueError) as exc:
                raise SpaceError(f"parameter {p.name!r} = {value!r}: {exc}") from None


__all__ = ["Param", "SearchSpace", "SpaceError", "parse_space", "read_space"]
