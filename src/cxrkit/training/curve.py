"""``learning_curve(spec)``: test AUROC (patient-clustered bootstrap CI) against the number of labelled films, for
several recipes (preset x initialisation), by patient-level K-fold cross-validation of one cache.

Per fold, the held-out patients are the test set; of the others, ``val_share`` are a validation split and the rest
is the labelled pool, whose first 10 %, 30 %, ... patients (one permutation per fold, so subsets are nested) are the
training sets; the validation split shrinks by the same share (a label budget covers validation films too).
Out-of-fold predictions of all folds are pooled and scored together (every film is scored once, by a model that
never saw it). With ``ensemble=K`` each run is trained K times with different seeds and the mean of their
probabilities is scored as a recipe of its own ("..., K-model ensemble") beside the first member alone, so the gain
of ensembling is measured against the same single model. Each training run is its own run folder, so an
interrupted curve resumes where it stopped and a second call with more recipes reuses the finished runs.
"""
from __future__ import annotations

import csv
import hashlib
import json
import math
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from cxrkit.data.errors import CxrError

RANDOM = "random"
CHEXNET = "chexnet"  # the default TrainConfig (CheXNet recipe), i.e. no preset


class CurveError(CxrError):
    """A learning-curve request that cannot be run."""


@dataclass
class CurveSpec:
    cache: str
    out: str
    fractions: list[float] = field(default_factory=lambda: [0.1, 0.3, 1.0])
    inits: list[str] = field(default_factory=lambda: [RANDOM])
    presets: list[str] = field(default_factory=lambda: [CHEXNET])
    folds: int = 5
    val_share: float = 0.15
    seed: int = 0
    n_boot: int = 1000
    tta: bool = False
    ensemble: int = 1  # models per run (different training seeds), their mean probability scored as one recipe
    train: dict = field(default_factory=dict)  # TrainConfig overrides for every run (arch, image_size, epochs...)

    def validate(self) -> "CurveSpec":
        bad = [f for f in self.fractions if not 0 < f <= 1]
        if bad or not self.fractions:
            raise CurveError(f"--fractions must be shares in (0, 1], e.g. 0.1,0.3,1; got {self.fractions}")
        if self.folds < 1:
            raise CurveError("--folds must be >= 2 for cross-validation, or 1 to use the cache's own train/val/test")
        if self.ensemble < 1:
            raise CurveError(f"--ensemble must be >= 1 (models per run), got {self.ensemble}")
        if not 0 < self.val_share < 0.5:
            raise CurveError(f"--val-share must be in (0, 0.5), got {self.val_share}")
        from cxrkit.training.config import PRESETS

        unknown = [p for p in self.presets if p != CHEXNET and p not in PRESETS]
        if unknown:
            raise CurveError(f"unknown preset {unknown[0]!r}; choose {CHEXNET} (the default recipe) or one of "
                             f"{', '.join(PRESETS)}")
        for init in self.inits:
            if init != RANDOM and not Path(init.partition(":")[2] or init).exists():
                raise CurveError(f"--init {init!r}: no such file or folder; give 'random' or a --pretrained value "
                                 "(a cxr pretrain backbone file, a bundle, KIND:FILE)")
        return self


def _slug(text: str) -> str:
    short = re.sub(r"[^A-Za-z0-9._-]+", "_", text)[-40:]
    return f"{short}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def arm_name(preset: str, init: str) -> str:
    if init == RANDOM:
        return f"{preset}+{init}"
    path = Path(init.partition(":")[2] or init)
    # a run's bundle folder is always called "bundle": name it by its run folder, as users do
    return f"{preset}+init:{path.parent.name + '/' if path.name == 'bundle' and path.parent.name else ''}{path.name}"


def ensemble_name(name: str, k: int) -> str:
    return f"{name}, {k}-model ensemble"


def member_seed(seed: int, member: int) -> int:
    """Training seed of ensemble member ``member``; member 0 trains with the curve's own seed (so an ensemble
    reuses the single-model runs already made)."""
    return seed + 1000 * member


def fold_plan(patients: np.ndarray, folds: int, val_share: float, seed: int, own_splits: np.ndarray | None):
    """[(test_mask, ordered validation patients, ordered pool patients)] per fold; ``own_splits``: the cache's
    split column (used when folds=1)."""
    uniq = np.unique(patients)
    rng = np.random.default_rng(seed)
    if folds == 1:
        val_p, pool = (np.unique(patients[own_splits == s]) for s in ("val", "train"))
        return [(own_splits == "test", val_p[rng.permutation(len(val_p))], pool[rng.permutation(len(pool))])]
    fold_of = dict(zip(uniq[rng.permutation(len(uniq))], np.arange(len(uniq)) % folds))
    fold = np.array([fold_of[p] for p in patients])
    plans = []
    for k in range(folds):
        rest = np.unique(patients[fold != k])
        rest = rest[np.random.default_rng([seed, k]).permutation(len(rest))]
        n_val = max(1, int(round(val_share * len(rest))))
        plans.append((fold == k, rest[:n_val], rest[n_val:]))
    return plans


def _first(ordered: np.ndarray, f: float, least: int) -> np.ndarray:
    """The first share ``f`` of ``ordered`` patients (at least ``least``): nested subsets across fractions."""
    return ordered[:min(len(ordered), max(least, int(math.ceil(f * len(ordered)))))]


def _predict(bundle: Path, cache, rows: np.ndarray, tta: bool) -> np.ndarray:
    from cxrkit.bundle import load_bundle
    from cxrkit.evaluation.predict import predict_rows
    from cxrkit.evaluation.tta import TTAPredictor

    pred = load_bundle(bundle)
    return predict_rows(TTAPredictor(pred) if tta else pred, cache, rows, progress=False)["probs"]


def _train_run(cache_view: Path, run_dir: Path, preset: str, init: str, spec: CurveSpec, seed: int) -> dict:
    """Train one run (resuming a folder left unfinished); returns its history's cost."""
    from cxrkit.training.config import resolve_config
    from cxrkit.training.engine import train

    done = run_dir / "bundle" / "config.json"
    if not done.is_file():
        overrides = {**spec.train, "cache": str(cache_view), "out": str(run_dir), "quiet": True,
                     "tensorboard": False, "quality_gate": False, "export": False, "seed": seed,
                     "preset": None if preset == CHEXNET else preset,
                     "pretrained": None if init == RANDOM else init,
                     "resume": (run_dir / "config.json").is_file() or None}
        train(resolve_config(None, **overrides))
    history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    return {"train_s": float(sum(h["time_s"] for h in history)), "epochs": len(history),
            "img_per_s": float(np.mean([h["img_per_s"] for h in history])) if history else float("nan")}


@dataclass
class _Recipe:
    name: str
    preset: str
    init: str
    models: int  # 1: a single model; K: the mean of K members' probabilities


@dataclass
class _Curve:
    """What the steps of one learning curve share: the spec, the cache and what has been scored so far."""
    spec: CurveSpec
    cache: object
    patients: np.ndarray
    plans: list
    recipes: list[_Recipe]
    progress: object
    t_start: float = field(default_factory=time.perf_counter)
    runs_done: int = 0
    scores: dict = field(default_factory=dict)  # (recipe, fraction) -> out-of-fold probabilities, NaN unscored
    per_fold: dict = field(default_factory=dict)  # (recipe, fraction) -> [fold mean AUROC]
    costs: dict = field(default_factory=dict)  # (recipe, fraction) -> [training cost per fold]
    sizes: dict = field(default_factory=dict)  # fraction -> [{train, val, test} per fold]

    @property
    def n_runs(self) -> int:
        singles = sum(r.models == 1 for r in self.recipes)
        return len(self.plans) * len(self.spec.fractions) * singles * self.spec.ensemble

    def record(self, recipe: str, f: float, test_rows: np.ndarray, probs: np.ndarray, cost: dict):
        from cxrkit.evaluation.bootstrap import ClusterBootstrap
        from cxrkit.evaluation.summary import ranking_summary

        names = list(self.cache.label_names)
        self.scores.setdefault((recipe, f), np.full((len(self.cache.index), len(names)), np.nan, np.float32))
        self.scores[(recipe, f)][test_rows] = probs
        fold_summary, _ = ranking_summary(self.cache.labels(test_rows).astype(np.float64), probs, names,
                                          ClusterBootstrap.draw(self.patients[test_rows], 0))
        self.per_fold.setdefault((recipe, f), []).append(fold_summary["mean_auroc"])
        self.costs.setdefault((recipe, f), []).append(cost)
        return fold_summary["mean_auroc"]


def learning_curve(spec: CurveSpec, progress=print) -> dict:
    """Run (or resume) every (recipe, fold, fraction) training and score the pooled out-of-fold predictions;
    writes OUT/learning_curve.json, .csv and .png; returns the JSON dict."""
    from cxrkit.data.cache import open_cache

    spec = spec.validate()
    cache = open_cache(spec.cache)
    patients = cache.index["patient_id"].astype(str).to_numpy()
    plans = fold_plan(patients, spec.folds, spec.val_share, spec.seed, cache.index["split"].astype(str).to_numpy())
    recipes = []
    for preset in spec.presets:
        for init in spec.inits:
            recipes.append(_Recipe(arm_name(preset, init), preset, init, 1))
            if spec.ensemble > 1:
                recipes.append(_Recipe(ensemble_name(arm_name(preset, init), spec.ensemble), preset, init,
                                       spec.ensemble))
    ctx = _Curve(spec, cache, patients, plans, recipes, progress)
    for k in range(len(plans)):
        for f in spec.fractions:
            _run_fold(ctx, k, f)
    report = _report(ctx)
    _write(report, Path(spec.out))
    return report


def _run_fold(ctx: _Curve, k: int, f: float) -> None:
    """Train and score every recipe on fold ``k`` with the share ``f`` of the labels."""
    from cxrkit.data.cache_view import write_split_view

    spec, out, patients = ctx.spec, Path(ctx.spec.out), ctx.patients
    test, val_patients, pool = ctx.plans[k]
    test_rows = np.flatnonzero(test)
    # a label budget covers the validation films too: both splits shrink with the fraction
    train_mask = np.isin(patients, _first(pool, f, 2))
    val = np.isin(patients, _first(val_patients, f, 2))
    splits = np.where(test, "test", np.where(val, "val", np.where(train_mask, "train", "unused")))
    view = write_split_view(ctx.cache, out / "views" / f"fold{k}" / f"f{f:g}", splits)
    ctx.sizes.setdefault(f, []).append({"train": int(train_mask.sum()), "val": int(val.sum()),
                                        "test": int(test.sum())})
    where = (f"fold {k + 1}/{len(ctx.plans)}, {f:.0%} of the labels ({int(train_mask.sum())} train + "
             f"{int(val.sum())} val films)")
    for recipe in ctx.recipes:
        if recipe.models > 1:
            continue  # scored from its members below
        member_probs, member_costs = [], []
        for m in range(spec.ensemble):
            ctx.runs_done += 1
            run_dir = out / "runs" / _slug(recipe.name) / f"fold{k}" / (f"f{f:g}" + (f"-m{m}" if m else ""))
            cost = _train_run(view.path, run_dir, recipe.preset, recipe.init, spec, member_seed(spec.seed, m))
            member_probs.append(_predict(run_dir / "bundle", ctx.cache, test_rows, spec.tta))
            member_costs.append(cost)
            member = f" (member {m + 1}/{spec.ensemble})" if spec.ensemble > 1 else ""
            auroc = ""
            if m == 0:  # the first member alone is the single-model recipe
                auroc = f"test mean AUROC {_fmt(ctx.record(recipe.name, f, test_rows, member_probs[0], cost))}, "
            ctx.progress(f"[{ctx.runs_done}/{ctx.n_runs}] {recipe.name}{member}, {where}: {auroc}trained in "
                         f"{cost['train_s']:.0f} s ({time.perf_counter() - ctx.t_start:.0f} s so far)")
        if spec.ensemble > 1:
            ens = ensemble_name(recipe.name, spec.ensemble)
            cost = {"train_s": sum(c["train_s"] for c in member_costs), "epochs": member_costs[0]["epochs"],
                    "img_per_s": float(np.mean([c["img_per_s"] for c in member_costs]))}
            auroc = ctx.record(ens, f, test_rows, np.mean(member_probs, axis=0), cost)
            ctx.progress(f"{ens}, {where}: test mean AUROC {_fmt(auroc)}")


def _report(ctx: _Curve) -> dict:
    """Pooled out-of-fold scores of every recipe, with the patient-clustered bootstrap CI and the paired difference
    to the first recipe."""
    from cxrkit.evaluation.bootstrap import ClusterBootstrap
    from cxrkit.evaluation.summary import ranking_summary

    spec = ctx.spec
    names = list(ctx.cache.label_names)
    rows_scored = np.flatnonzero(np.any(np.stack([t for t, _, _ in ctx.plans]), axis=0))
    boot = ClusterBootstrap.draw(ctx.patients[rows_scored], spec.n_boot, spec.seed)
    Y = ctx.cache.labels(rows_scored).astype(np.float64)
    results, reps_of = [], {}
    for recipe in ctx.recipes:
        for f in spec.fractions:
            key = (recipe.name, f)
            summary, reps = ranking_summary(Y, ctx.scores[key][rows_scored].astype(np.float64), names, boot)
            reps_of[key] = (summary["mean_auroc"], reps["mean_auroc"])
            fold_means = [m for m in ctx.per_fold[key] if m is not None]
            c, sizes = ctx.costs[key], ctx.sizes[f]
            results.append({
                "recipe": recipe.name, "preset": recipe.preset, "init": recipe.init, "fraction": f,
                "models": recipe.models,
                "n_labelled": float(np.mean([s["train"] + s["val"] for s in sizes])),
                "n_train": float(np.mean([s["train"] for s in sizes])),
                "mean_auroc": summary["mean_auroc"], "ci_low": summary["mean_auroc_ci_low"],
                "ci_high": summary["mean_auroc_ci_high"], "n_test": int(len(rows_scored)),
                "fold_mean_auroc": fold_means, "fold_mean_auroc_avg": float(np.mean(fold_means)) if fold_means else None,
                "per_class_auroc": {n: e["auroc"] for n, e in summary["per_class"].items()},
                "train_s_per_run": float(np.mean([x["train_s"] for x in c])), "epochs": c[0]["epochs"],
                "train_img_per_s": float(np.mean([x["img_per_s"] for x in c])),
                "vs_reference": _vs_reference(reps_of, ctx.recipes[0].name, recipe.name, f)})
    return {"spec": asdict(spec), "folds": len(ctx.plans), "scoring": "pooled out-of-fold predictions, patient-"
            "clustered bootstrap 95% CI" if spec.folds > 1 else "the cache's test split, patient-clustered "
            "bootstrap 95% CI", "wall_s": time.perf_counter() - ctx.t_start, "results": results}


def _write(report: dict, out: Path) -> None:
    from cxrkit.training.curve_figure import curve_figure

    out.mkdir(parents=True, exist_ok=True)
    (out / "learning_curve.json").write_text(json.dumps(report, indent=2))
    with open(out / "learning_curve.csv", "w", newline="") as fh:
        keys = ["recipe", "fraction", "models", "n_labelled", "n_train", "mean_auroc", "ci_low", "ci_high", "n_test",
                "fold_mean_auroc_avg", "train_s_per_run", "epochs", "train_img_per_s"]
        w = csv.DictWriter(fh, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        w.writerows(report["results"])
    curve_figure(report, out / "learning_curve.png")


def _vs_reference(reps_of: dict, reference: str, name: str, fraction: float) -> dict | None:
    """Mean AUROC of a recipe minus the first recipe's (the reference, e.g. the CheXNet recipe from random weights)
    at the same label share, with a paired patient-clustered bootstrap CI: both scored on the same films and the
    same bootstrap draws, so the CI of the difference is far narrower than the two recipes' CIs side by side."""
    from cxrkit.evaluation.compare import paired_bootstrap

    if name == reference:
        return None
    (point, reps), (ref_point, ref_reps) = reps_of[(name, fraction)], reps_of[(reference, fraction)]
    if point is None or ref_point is None:
        return None
    return {"reference": reference, **paired_bootstrap(reps, ref_reps, point, ref_point)}


def _fmt(x) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{x:.3f}"
