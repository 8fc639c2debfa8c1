"""Pruning cost benchmark for `cxr tune` (issue 12, docs/tune.md "Pruning cost").

The same study (same space, same sampler seed, the same number of trials) run once per pruner: ``none`` (every
trial trains all its epochs) against each pruner asked for. Reports, per arm, the compute spent (trial-epochs
trained, CPU seconds of the trials, wall seconds of this run) and the best trial's validation mean AUROC with its 95 %
bootstrap CI (cxrkit.evaluation.evaluate on the val split), and for the pruned arms the compute saved and whether
their best AUROC lies inside the CI of the no-pruning arm's best. Synthetic (phantom) results.

    flock /work/heavy.lock nice -n 5 python tools/bench_tune_pruning.py CACHE --out OUT --trials 24 --epochs 6 \\
        --pruners sha,hyperband,median

Each arm is resumable (its own study in OUT/ARM/study.db): rerunning finishes the missing trials only.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def space_dict(pruner: str, epochs: int, image_size: int, threads: int) -> dict:
    return {
        "study": {"pruner": pruner, "pruner_startup_trials": 3, "pruner_warmup_epochs": 1},
        "fixed": {"arch": "cxr_tiny", "image_size": image_size, "epochs": epochs, "batch_size": 32,
                  "num_threads": threads, "lr_schedule": "cosine", "early_stop_patience": None,
                  "tensorboard": False, "quality_gate": False, "precision": "fp32", "channels_last": False},
        "params": {"lr": {"type": "float", "low": 1e-5, "high": 1e-1, "log": True},
                   "weight_decay": {"type": "float", "low": 1e-6, "high": 1e-2, "log": True},
                   "optimizer": ["adam", "sgd", "rmsprop"],
                   "head": ["linear", "attention"],
                   "drop_rate": {"type": "float", "low": 0.0, "high": 0.5}},
    }


def run_arm(cache: str, out: Path, pruner: str, args) -> dict:
    import optuna

    from cxrkit.evaluation.evaluate import evaluate
    from cxrkit.tuning.space import parse_space
    from cxrkit.tuning.study import TuneSpec, run_study

    space = parse_space(space_dict(pruner, args.epochs, args.image_size, args.threads))
    arm = out / pruner
    wall0 = time.monotonic()
    study = run_study(TuneSpec(cache=cache, space=space, out=str(arm), trials=args.trials, seed=args.seed,
                               study=f"bench-{pruner}", progress=True))
    wall = time.monotonic() - wall0
    trials = [t for t in study.trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
    epochs = sum(int(t.user_attrs.get("epochs_run", 0)) for t in trials)
    cpu = sum(float(t.user_attrs.get("cpu_s", 0.0)) for t in trials)  # per trial: right for a resumed arm too
    best = study.best_trial
    m = evaluate(arm / best.user_attrs["bundle"], cache, split="val", n_boot=args.n_boot, seed=0, heatmaps=False,
                 localisation=False, progress=False)
    record = {"pruner": pruner, "trials": len(trials),
              "pruned": sum(t.state == optuna.trial.TrialState.PRUNED for t in trials), "trial_epochs": epochs,
              "max_trial_epochs": len(trials) * args.epochs, "cpu_s": round(cpu, 1), "wall_s": round(wall, 1),
              "best_trial": best.number, "best_value": best.value, "best_params": best.params,
              "val_mean_auroc": m["mean_auroc"], "val_ci": [m["mean_auroc_ci_low"], m["mean_auroc_ci_high"]]}
    (arm / "bench.json").write_text(json.dumps(record, indent=2))
    print(json.dumps(record), flush=True)
    return record


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cache")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--trials", type=int, default=24)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-boot", type=int, default=500)
    ap.add_argument("--pruners", default="sha,hyperband,median", help="Pruned arms, compared with 'none'.")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    results = {}
    for pruner in ["none", *[p for p in args.pruners.split(",") if p and p != "none"]]:
        results[pruner] = run_arm(args.cache, args.out, pruner, args)
    base = results["none"]
    lo = base["val_ci"][0]
    for pruner, r in results.items():
        if pruner == "none":
            continue
        r["epochs_saved"] = 1 - r["trial_epochs"] / base["trial_epochs"]
        r["cpu_saved"] = 1 - r["cpu_s"] / base["cpu_s"] if base["cpu_s"] else None
        r["best_within_ci_of_none"] = r["val_mean_auroc"] >= lo  # inside the CI, or above it
    summary = {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
               "results": results, "note": "phantom (synthetic) data; research use only"}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"{'pruner':10} {'pruned':>6} {'epochs':>7} {'saved':>6} {'cpu s':>7} {'cpu saved':>9} "
          f"{'val AUROC [95% CI]':>26} in-CI")
    for pruner, r in results.items():
        saved = f"{r.get('epochs_saved', 0):.0%}"
        cpu_saved = f"{r['cpu_saved']:.0%}" if r.get("cpu_saved") is not None else "-"
        ci = f"{r['val_mean_auroc']:.3f} [{r['val_ci'][0]:.3f}, {r['val_ci'][1]:.3f}]"
        print(f"{pruner:10} {r['pruned']:>6} {r['trial_epochs']:>7} {saved:>6} {r['cpu_s']:>7.0f} {cpu_saved:>9} "
              f"{ci:>26} {r.get('best_within_ci_of_none', '-')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
