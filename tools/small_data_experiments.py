"""The side experiments of docs/small-data.md that are not `cxr` commands: a centre-cropped copy of a cache, fine-tuning
on each CV fold's real films together with labelled phantoms, and ensembles mixed across the recipes of a finished
learning curve. Each uses cxrkit's own fold plan, training and scoring, so its numbers pair with the curve's.

    python tools/small_data_experiments.py crop-cache nih128 nihc80 --side 0.8 --left 0.1 --top 0.05
    python tools/small_data_experiments.py cotrain nih128 ph20k_128 --out co1000_s0 --phantoms 1000 \\
        --init phsup64/bundle --seed 0 --members 3 --reference cv64_s0
    python tools/small_data_experiments.py mix cv64_s0 --combo RECIPE_DIR+RECIPE_DIR [--also CURVE --combo
        RECIPE_DIR+CURVE_NAME/RECIPE_DIR] [--reference CURVE]

Research use only; phantom numbers are not clinical performance.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np


def crop_cache(src: str, out: str, side: float, left: float, top: float) -> None:
    """A copy of cache ``src`` whose squares are the square [left, left + side] x [top, top + side] of each (as
    fractions of its side) resized back to the cache size: a fixed lung-field centring."""
    import cv2

    from cxrkit.data.cache import open_cache

    if not (0 < side <= 1 and 0 <= left <= 1 - side and 0 <= top <= 1 - side):
        _usage(f"the crop {left}+{side} x {top}+{side} leaves the image; keep 0 < side and left/top + side <= 1")
    dst = Path(out)
    if dst.exists():
        _usage(f"{dst} exists; give a new folder")
    cache = open_cache(src)
    images = np.load(cache.path / "images.npy", mmap_mode="r")
    p = images.shape[-1]
    x0, y0, s = round(left * p), round(top * p), round(side * p)
    shutil.copytree(cache.path, dst, symlinks=False)
    cropped = np.stack([cv2.resize(np.ascontiguousarray(im[y0:y0 + s, x0:x0 + s]), (p, p),
                                   interpolation=cv2.INTER_LINEAR) for im in images])
    np.save(dst / "images.npy", cropped)
    manifest = json.loads((dst / "manifest.json").read_text())
    manifest["content_hash"] = f"{manifest.get('content_hash')}:crop{left},{top},{side}"
    manifest["centre_crop"] = {"left": left, "top": top, "side": side}
    (dst / "manifest.json").write_text(json.dumps(manifest, indent=1))
    print(f"wrote {dst}: {len(cropped)} films cropped to x {x0}-{x0 + s}, y {y0}-{y0 + s} of {p} px")


def _usage(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def _merged(real, phantoms, n: int, folder: Path):
    """A cache of ``real``'s rows followed by the first ``n`` training phantoms (their own patient ids)."""
    import pandas as pd

    from cxrkit.data.cache import open_cache

    if not (folder / "manifest.json").exists():
        folder.mkdir(parents=True, exist_ok=True)
        pidx = phantoms.index[phantoms.index["split"] == "train"].iloc[:n].copy()
        if len(pidx) < n:
            _usage(f"{phantoms.path} has only {len(pidx)} training phantoms; ask for fewer")
        if phantoms.manifest["size"] != real.manifest["size"]:
            _usage("the phantom cache's size differs from the real cache's; prepare the phantoms at that size")
        images = np.concatenate([np.load(real.path / "images.npy"),
                                 np.load(phantoms.path / "images.npy", mmap_mode="r")[pidx.index.to_numpy()]])
        np.save(folder / "images.npy", images)
        pidx["patient_id"] = "phantom-" + pidx["patient_id"].astype(str)
        pd.concat([real.index, pidx], ignore_index=True).to_parquet(folder / "index.parquet", index=False)
        for name in ("boxes.parquet", "bad_files.csv"):
            shutil.copyfile(real.path / name, folder / name)
        manifest = {**real.manifest, "n_images": len(real.index) + n,
                    "content_hash": f"{real.manifest.get('content_hash')}+phantoms{n}"}
        (folder / "manifest.json").write_text(json.dumps(manifest, indent=1))
    merged = open_cache(folder)
    if len(merged.index) != len(real.index) + n:
        _usage(f"{folder} holds {len(merged.index) - len(real.index)} phantoms, not {n}; give another --out")
    return merged


def _reference(curve_dir: str, seed: int) -> np.ndarray:
    """Out-of-fold probabilities of a finished curve's first single-model recipe (its reference); the curve must
    have been run with CV seed ``seed`` (otherwise its folds differ and nothing pairs)."""
    curve = Path(curve_dir)
    spec, cache = _open_curve(curve)
    if spec["seed"] != seed:
        _usage(f"{curve} was run with CV seed {spec['seed']}, not {seed}: its folds differ")
    return _member_probs(curve, spec, cache)[_first_reference(curve, spec)]


def cotrain(real_cache: str, phantom_cache: str, out: str, n: int, init: str, seed: int, members: int,
            reference: str) -> None:
    """Per fold of the curve's 5-fold plan: train on the fold's real training films plus ``n`` labelled phantoms
    (always in train; validation and test are real films only), then score pooled out-of-fold against the reference
    recipe of the curve ``reference`` (same seed, so the same folds)."""
    from cxrkit.data.cache import open_cache
    from cxrkit.data.cache_view import write_split_view
    from cxrkit.training.curve import CurveSpec, _predict, _train_run, fold_plan, member_seed

    real, phantoms = open_cache(real_cache), open_cache(phantom_cache)
    merged = _merged(real, phantoms, n, Path(out) / "cache")
    patients = real.index["patient_id"].astype(str).to_numpy()
    plans = fold_plan(patients, 5, 0.15, seed, real.index["split"].astype(str).to_numpy())
    spec = CurveSpec(cache=str(merged.path), out=out, seed=seed, train={
        "arch": "cxr_tiny", "image_size": 64, "epochs": 8, "batch_size": 32, "num_threads": 2})
    probs = np.zeros((members, len(patients), len(real.label_names)), np.float32)
    for k, (test, val_patients, _) in enumerate(plans):
        splits = np.where(test, "test", np.where(np.isin(patients, val_patients), "val", "train"))
        splits = np.concatenate([splits, np.full(n, "train")])
        view = write_split_view(merged, Path(out) / "views" / f"fold{k}", splits)
        rows = np.flatnonzero(test)
        for m in range(members):
            run = Path(out) / "runs" / f"fold{k}" / f"m{m}"
            cost = _train_run(view.path, run, "chexnet", init, spec, member_seed(seed, m))
            probs[m, rows] = _predict(run / "bundle", real, rows, False)
            print(f"fold {k + 1}/5, member {m + 1}/{members}: trained in {cost['train_s']:.0f} s", flush=True)
    np.save(Path(out) / "probs.npy", probs)
    ref = _reference(reference, seed)
    _print_vs(real, patients, seed, ref, [(f"{n} phantoms + real, single", probs[0]),
                                         (f"{n} phantoms + real, {members}-model ensemble", probs.mean(0))])


def _open_curve(curve: Path):
    """A finished curve's spec and its cache (a relative cache path is taken from the curve's parent folder)."""
    from cxrkit.data.cache import open_cache

    spec = json.loads((curve / "learning_curve.json").read_text())["spec"]
    cache_path = Path(spec["cache"])
    return spec, open_cache(cache_path if cache_path.is_absolute() else curve.parent / cache_path)


def _first_reference(curve: Path, spec: dict) -> str:
    slug = f"{spec['presets'][0]}_{spec['inits'][0]}"
    runs = sorted(p.name for p in (curve / "runs").iterdir() if p.name.startswith(slug))
    return f"{runs[0]}/f{spec['fractions'][0]:g}"


def _member_probs(curve: Path, spec: dict, cache) -> dict[str, np.ndarray]:
    """Pooled out-of-fold probabilities of every member run of a finished curve (fraction 1 runs), cached in
    member_probs.npz beside it."""
    from cxrkit.training.curve import _predict, fold_plan

    patients = cache.index["patient_id"].astype(str).to_numpy()
    plans = fold_plan(patients, spec["folds"], spec["val_share"], spec["seed"],
                      cache.index["split"].astype(str).to_numpy())
    store = curve / "member_probs.npz"
    probs = dict(np.load(store)) if store.exists() else {}
    for recipe in sorted((curve / "runs").iterdir()):
        for member in sorted({p.name for p in (recipe / "fold0").iterdir()}):
            key = f"{recipe.name}/{member}"
            if key in probs:
                continue
            p = np.full((len(patients), len(cache.label_names)), np.nan, np.float32)
            for k, (test, _, _) in enumerate(plans):
                rows = np.flatnonzero(test)
                if not (recipe / f"fold{k}" / member / "bundle" / "config.json").is_file():
                    _usage(f"{recipe / f'fold{k}' / member} has no bundle yet; finish the curve first (run its "
                           "cxr learning-curve command again: it resumes)")
                p[rows] = _predict(recipe / f"fold{k}" / member / "bundle", cache, rows, False)
            probs[key] = p
    np.savez(store, **probs)
    return probs


def _print_vs(cache, patients, seed: int, reference: np.ndarray, named: list[tuple[str, np.ndarray]]) -> None:
    from cxrkit.evaluation.bootstrap import ClusterBootstrap
    from cxrkit.evaluation.compare import paired_bootstrap
    from cxrkit.evaluation.summary import ranking_summary

    Y = cache.labels(np.arange(len(patients))).astype(np.float64)
    boot = ClusterBootstrap.draw(patients, 1000, seed)
    names = list(cache.label_names)
    ref_s, ref_r = ranking_summary(Y, reference.astype(np.float64), names, boot)
    print(f"reference: mean AUROC {ref_s['mean_auroc']:.3f}")
    for label, p in named:
        s, r = ranking_summary(Y, p.astype(np.float64), names, boot)
        d = paired_bootstrap(r["mean_auroc"], ref_r["mean_auroc"], s["mean_auroc"], ref_s["mean_auroc"])
        print(f"{label}: mean AUROC {s['mean_auroc']:.3f} [{s['mean_auroc_ci_low']:.3f}, "
              f"{s['mean_auroc_ci_high']:.3f}]; {d['diff']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}] vs reference")


def mix(curve_dir: str, combos: list[str], reference: str | None = None, also: list[str] = ()) -> None:
    """Every recipe's single model and all-member ensemble of a finished curve, and ensembles pooled across recipes
    ("A+B": every member of recipe folders A and B), each against the reference recipe of the curve ``reference``
    (default: this one; another curve of the same cache and seed has the same folds) with the paired CI. ``also``:
    more curves of the same cache and seed whose recipe folders join the combos as CURVE_NAME/RECIPE_DIR."""
    curve = Path(curve_dir)
    spec, cache = _open_curve(curve)
    probs = _member_probs(curve, spec, cache)
    groups: dict[str, list[str]] = {}
    for key in probs:
        groups.setdefault(key.split("/")[0], []).append(key)
    own = list(groups)
    for other in map(Path, also):
        other_spec, other_cache = _open_curve(other)
        if other_spec["seed"] != spec["seed"]:
            _usage(f"{other} was run with another CV seed: its folds differ from {curve}'s")
        for key, p in _member_probs(other, other_spec, other_cache).items():
            probs[f"{other.name}/{key}"] = p
            groups.setdefault(f"{other.name}/{key.split('/')[0]}", []).append(f"{other.name}/{key}")
    named = []
    for g, ks in ((g, groups[g]) for g in own):
        named.append((f"{g} (single)", probs[sorted(ks)[0]]))
        named.append((f"{g} ({len(ks)} models)", np.mean([probs[k] for k in ks], axis=0)))
    for combo in combos:
        unknown = [g for g in combo.split("+") if g not in groups]
        if unknown:
            _usage(f"no recipe folder {unknown} in {curve / 'runs'}; it has {', '.join(groups)}")
        keys = [k for g in combo.split("+") for k in groups[g]]
        named.append((f"{combo} ({len(keys)} models)", np.mean([probs[k] for k in keys], axis=0)))
    ref = probs[_first_reference(curve, spec)] if reference is None else _reference(reference, spec["seed"])
    _print_vs(cache, cache.index["patient_id"].astype(str).to_numpy(), spec["seed"], ref, named)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("crop-cache")
    c.add_argument("cache")
    c.add_argument("out")
    c.add_argument("--side", type=float, default=0.8)
    c.add_argument("--left", type=float, default=0.1)
    c.add_argument("--top", type=float, default=0.05)
    t = sub.add_parser("cotrain")
    t.add_argument("real_cache")
    t.add_argument("phantom_cache")
    t.add_argument("--out", required=True)
    t.add_argument("--phantoms", type=int, default=1000)
    t.add_argument("--init", default="random")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--members", type=int, default=3)
    t.add_argument("--reference", required=True, help="a finished learning curve of the same cache and seed")
    m = sub.add_parser("mix")
    m.add_argument("curve")
    m.add_argument("--combo", action="append", default=[])
    m.add_argument("--reference", help="score against this curve's reference (same cache and seed)")
    m.add_argument("--also", action="append", default=[], help="another curve (same cache and seed) for --combo")
    a = ap.parse_args(argv)
    if a.cmd == "crop-cache":
        crop_cache(a.cache, a.out, a.side, a.left, a.top)
    elif a.cmd == "cotrain":
        cotrain(a.real_cache, a.phantom_cache, a.out, a.phantoms, a.init, a.seed, a.members, a.reference)
    else:
        mix(a.curve, a.combo, a.reference, a.also)


if __name__ == "__main__":
    main()
