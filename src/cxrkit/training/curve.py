"""``learning_curve(spec)``: test AUROC (patient-clustered bootstrap CI) against the number of labelled films, for
several recipes (preset x initialisation), by patient-level K-fold cross-validation of one cache.

Per fold, the held-out patients are the test set; of the others, ``val_share`` are a validation split and the rest
is the labelled pool, whose first 10 %, 30 %, ... patients (one permutation per fold, so subsets are nested) are the
training sets; the validation split shrinks by the same share (a label budget covers validation films too).
Out-of-fold predictions of all folds are pooled and scored together (every film is scored once, by
a model that never saw it). Each training run is its own run folder, so an interrupted curve resumes where it
stopped and a second call with more recipes reuses the finished runs.
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
    train: dict = field(default_factory=dict)  # TrainConfig overrides for every run (arch, image_size, epochs...)

    def validate(self) -> "CurveSpec":
        bad = [f for f in self.fractions if not 0 < f <= 1]
        if bad or not self.fractions:
            raise CurveError(f"--fractions must be shares in (0, 1], e.g. 0.1,0.3,1; got {self.fractions}")
        if self.folds < 1:
            raise CurveError("--folds must be >= 2 for cross-validation, or 1 to use the cache's own train/val/test")
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


def _train_run(cache_view: Path, run_dir: Path, preset: str, init: str, spec: CurveSpec) -> dict:
    """Train one run (resuming a folder left unfinished); returns its history's cost."""
    from cxrkit.training.config import resolve_config
    from cxrkit.training.engine import train

    done = run_dir / "bundle" / "config.json"
    if not done.is_file():
        overrides = {**spec.train, "cache": str(cache_view), "out": str(run_dir), "quiet": True,
                     "tensorboard": False, "quality_gate": False, "export": False, "seed": spec.seed,
                     "preset": None if preset == CHEXNET else preset,
                     "pretrained": None if init == RANDOM else init,
                     "resume": (run_dir / "config.json").is_file() or None}
        train(resolve_config(None, **overrides))
    history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    return {"train_s": float(sum(h["time_s"] for h in history)), "epochs": len(history),
            "img_per_s": float(np.mean([h["img_per_s"] for h in history])) if history else float("nan")}


def learning_curve(spec: CurveSpec, progress=print) -> dict:
    """Run (or resume) every (recipe, fold, fraction) training and score the pooled out-of-fold predictions;
    writes OUT/learning_curve.json, .csv and .png; returns the JSON dict."""
    from cxrkit.data.cache import open_cache
    from cxrkit.data.cache_view import write_split_view
    from cxrkit.evaluation.bootstrap import ClusterBootstrap
    from cxrkit.evaluation.summary import ranking_summary
    from cxrkit.training.curve_figure import curve_figure

    spec = spec.validate()
    out = Path(spec.out)
    cache = open_cache(spec.cache)
    patients = cache.index["patient_id"].astype(str).to_numpy()
    own = cache.index["split"].astype(str).to_numpy()
    plans = fold_plan(patients, spec.folds, spec.val_share, spec.seed, own)
    names = list(cache.label_names)
    arms = [(p, i) for p in spec.presets for i in spec.inits]
    n_runs, k_run, t_start = len(arms) * len(plans) * len(spec.fractions), 0, time.perf_counter()
    scores = {(a, f): np.full((len(cache.index), len(names)), np.nan, np.float32)
              for a in map(lambda x: arm_name(*x), arms) for f in spec.fractions}
    per_fold, sizes, costs = {}, {}, {}
    for k, (test, val_patients, pool) in enumerate(plans):
        test_rows = np.flatnonzero(test)
        for f in spec.fractions:
            # a label budget covers the validation films too: both splits shrink with the fraction
            train_mask = np.isin(patients, _first(pool, f, 2))
            val = np.isin(patients, _first(val_patients, f, 2))
            splits = np.where(test, "test", np.where(val, "val", np.where(train_mask, "train", "unused")))
            view = write_split_view(cache, out / "views" / f"fold{k}" / f"f{f:g}", splits)
            sizes.setdefault(f, []).append({"train": int(train_mask.sum()), "val": int(val.sum()),
                                            "test": int(test.sum())})
            for preset, init in arms:
                name = arm_name(preset, init)
                k_run += 1
                run_dir = out / "runs" / _slug(name) / f"fold{k}" / f"f{f:g}"
                cost = _train_run(view.path, run_dir, preset, init, spec)
                probs = _predict(run_dir / "bundle", cache, test_rows, spec.tta)
                scores[(name, f)][test_rows] = probs
                fold_summary, _ = ranking_summary(cache.labels(test_rows).astype(np.float64), probs, names,
                                                  ClusterBootstrap.draw(patients[test_rows], 0))
                per_fold.setdefault((name, f), []).append(fold_summary["mean_auroc"])
                costs.setdefault((name, f), []).append(cost)
                progress(f"[{k_run}/{n_runs}] {name}, fold {k + 1}/{len(plans)}, {f:.0%} of the labels "
                         f"({int(train_mask.sum())} train + {int(val.sum())} val films): test mean AUROC "
                         f"{_fmt(fold_summary['mean_auroc'])}, trained in {cost['train_s']:.0f} s "
                         f"({time.perf_counter() - t_start:.0f} s so far)")
    rows_scored = np.flatnonzero(np.any(np.stack([t for t, _, _ in plans]), axis=0))
    boot = ClusterBootstrap.draw(patients[rows_scored], spec.n_boot, spec.seed)
    Y = cache.labels(rows_scored).astype(np.float64)
    results, reps_of = [], {}
    for preset, init in arms:
        name = arm_name(preset, init)
        for f in spec.fractions:
            summary, reps = ranking_summary(Y, scores[(name, f)][rows_scored].astype(np.float64), names, boot)
            reps_of[(name, f)] = (summary["mean_auroc"], reps["mean_auroc"])
            fold_means = [m for m in per_fold[(name, f)] if m is not None]
            c = costs[(name, f)]
            results.append({
                "recipe": name, "preset": preset, "init": init, "fraction": f,
                "n_labelled": float(np.mean([s["train"] + s["val"] for s in sizes[f]])),
                "n_train": float(np.mean([s["train"] for s in sizes[f]])),
                "mean_auroc": summary["mean_auroc"], "ci_low": summary["mean_auroc_ci_low"],
                "ci_high": summary["mean_auroc_ci_high"], "n_test": int(len(rows_scored)),
                "fold_mean_auroc": fold_means, "fold_mean_auroc_avg": float(np.mean(fold_means)) if fold_means else None,
                "per_class_auroc": {n: e["auroc"] for n, e in summary["per_class"].items()},
                "train_s_per_run": float(np.mean([x["train_s"] for x in c])), "epochs": c[0]["epochs"],
                "train_img_per_s": float(np.mean([x["img_per_s"] for x in c])),
                "vs_reference": _vs_reference(reps_of, arm_name(*arms[0]), name, f)})
    report = {"spec": asdict(spec), "folds": len(plans), "scoring": "pooled out-of-fold predictions, patient-"
              "clustered bootstrap 95% CI" if spec.folds > 1 else "the cache's test split, patient-clustered "
              "bootstrap 95% CI", "wall_s": time.perf_counter() - t_start, "results": results}
    out.mkdir(parents=True, exist_ok=True)
    (out / "learning_curve.json").write_text(json.dumps(report, indent=2))
    with open(out / "learning_curve.csv", "w", newline="") as fh:
        keys = ["recipe", "fraction", "n_labelled", "n_train", "mean_auroc", "ci_low", "ci_high", "n_test",
                "fold_mean_auroc_avg", "train_s_per_run", "epochs", "train_img_per_s"]
        w = csv.DictWriter(fh, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        w.writerows(results)
    curve_figure(report, out / "learning_curve.png")
    return report


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
