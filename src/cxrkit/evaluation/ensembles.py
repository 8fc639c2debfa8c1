"""Building ensemble bundles (``cxr ensemble``): copy members, fit weights and thresholds on validation."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Sequence

import numpy as np

from cxrkit.bundle.ensemble import ENSEMBLE_METHODS
from cxrkit.data.errors import CxrError


class EnsembleError(CxrError):
    """An ensemble cannot be built from the given bundles / options."""


def _val_auroc(Y: np.ndarray, P: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    vals = []
    for c in range(Y.shape[1]):
        known = ~np.isnan(Y[:, c])
        y = Y[known, c] >= 0.5
        if y.any() and (~y).any():
            vals.append(roc_auc_score(y, P[known, c]))
    return float(np.mean(vals)) if vals else float("nan")


def fit_weights(Y: np.ndarray, member_probs: Sequence[np.ndarray]) -> tuple[list[float], list[float]]:
    """Weights proportional to each member's validation mean AUROC above chance (0.5), floored at 0.01 so a weak
    member is down-weighted rather than dropped; returns (weights, member AUROCs)."""
    aurocs = [_val_auroc(Y, p) for p in member_probs]
    raw = np.array([max((a if np.isfinite(a) else 0.5) - 0.5, 0.01) for a in aurocs])
    return (raw / raw.sum()).tolist(), aurocs


def build_ensemble(bundles: Sequence[str | Path], out: str | Path, *, method: str = "mean", cache=None,
                   split: str = "val", batch_size: int = 64, progress: bool = True, overwrite: bool = False) -> Path:
    """Write an ensemble bundle to ``out`` (members copied to ``out/members/i/``) and return its path.

    With ``cache`` (a path or :class:`cxrkit.data.Cache`), ``weighted`` weights and the ensemble's thresholds
    (Youden J per finding) are fitted on its ``split`` split; without it, thresholds are the members' mean (0.5 for
    ``vote``) and ``weighted`` is refused.
    """
    from cxrkit.bundle import load_bundle, read_bundle_config, trained_on_synthetic, write_bundle_config
    from cxrkit.evaluation.operating import choose_threshold
    from cxrkit.evaluation.predict import predict_rows

    if method not in ENSEMBLE_METHODS:
        raise EnsembleError(f"unknown ensemble method {method!r}; choose from {ENSEMBLE_METHODS}")
    if len(bundles) < 2:
        raise EnsembleError("an ensemble needs at least two bundles")
    if method == "weighted" and cache is None:
        raise EnsembleError("--method weighted fits its weights on validation data: pass --cache CACHE")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise EnsembleError(f"{out} exists and is not empty; choose another --out or pass --overwrite")
        shutil.rmtree(out)
    configs = [read_bundle_config(b) for b in bundles]
    names = configs[0]["label_names"]
    for b, cfg in zip(bundles, configs):
        if cfg["label_names"] != names:
            raise EnsembleError(f"{b} predicts {cfg['label_names']}, {bundles[0]} predicts {names}: members must "
                                "share the same findings in the same order")
    out.mkdir(parents=True, exist_ok=True)
    members = []
    for i, b in enumerate(bundles):
        shutil.copytree(b, out / "members" / str(i))
        members.append(f"members/{i}")
    preresize = max(int(c["input"]["preresize"]) for c in configs)
    first = configs[0]
    config = {
        "format": first["format"], "format_version": first["format_version"], "notice": first.get("notice"),
        "model": None, "input": {**first["input"], "preresize": preresize}, "label_names": names,
        "thresholds": {}, "threshold_policy": "", "calibration": None, "quality_gate": None,
        "ensemble": {"method": method, "members": members, "weights": [1.0 / len(members)] * len(members),
                     "sources": [str(b) for b in bundles]},
        "provenance": {"members": [c.get("provenance", {}) for c in configs],
                       "data_source": first.get("provenance", {}).get("data_source"),
                       "synthetic": any(trained_on_synthetic(c) for c in configs)},
        "metrics": {},
    }
    if cache is None:
        if method == "vote":
            config["thresholds"] = {n: 0.5 for n in names}
        else:
            config["thresholds"] = {n: float(np.mean([c["thresholds"][n] for c in configs])) for n in names}
        config["threshold_policy"] = "members-mean" if method != "vote" else "majority-vote"
        write_bundle_config(out, config)
        return out

    from cxrkit.data import open_cache

    cache = open_cache(cache) if isinstance(cache, (str, Path)) else cache
    rows = cache.rows(split)
    if len(rows) == 0:
        raise EnsembleError(f"the cache has no {split!r} rows to fit the ensemble on")
    Y = cache.labels(rows).astype(np.float64)
    write_bundle_config(out, {**config, "thresholds": {n: 0.5 for n in names}})
    ens = load_bundle(out)
    member_probs = [predict_rows(m, cache, rows, batch_size=batch_size, progress=progress,
                                 desc=f"member {i} ({split})")["probs"] for i, m in enumerate(ens.members)]
    weights, aurocs = fit_weights(Y, member_probs)
    if method == "weighted":
        config["ensemble"]["weights"] = weights
    config["ensemble"]["member_val_mean_auroc"] = aurocs
    write_bundle_config(out, {**config, "thresholds": {n: 0.5 for n in names}})
    P = load_bundle(out)._combine([{"probs": p, "abnormality": p.max(axis=1)} for p in member_probs])["probs"]
    thresholds = {}
    for c, n in enumerate(names):
        t = choose_threshold(Y[:, c], P[:, c], "youden")
        thresholds[n] = float(t) if t is not None else float(np.mean([cf["thresholds"][n] for cf in configs]))
    config["thresholds"] = thresholds
    config["threshold_policy"] = f"youden-{split}"
    config["metrics"] = {"mean_auroc": _val_auroc(Y, P), "split": split}
    write_bundle_config(out, config)
    return out
