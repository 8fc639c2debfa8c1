"""The end of a run: best weights + validation thresholds + provenance -> RUN_DIR/bundle."""
from __future__ import annotations

import subprocess
from importlib import metadata
from pathlib import Path

import numpy as np

import cxrkit
from cxrkit.training.config import TrainConfig
from cxrkit.training.thresholds import THRESHOLD_POLICY, youden_thresholds

PACKAGES = ("torch", "torchvision", "timm", "numpy", "scikit-learn", "safetensors", "opencv-python-headless")


def git_commit() -> str | None:
    """HEAD of the git checkout cxrkit is imported from (None when installed from a wheel or git is absent)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(cxrkit.__file__).resolve().parent,
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def package_versions() -> dict[str, str | None]:
    out = {"cxrkit": cxrkit.__version__}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _trained_on_synthetic_rows(cache, cfg: TrainConfig) -> bool:
    """Whether any training or validation row of the cache is synthetic (its ``source`` column, e.g. "phantom")."""
    from cxrkit.bundle.synthetic import sources_are_synthetic

    index = cache.index
    rows = index["split"].isin([cfg.train_split, cfg.val_split]) if "split" in index else slice(None)
    return sources_are_synthetic(set(index.loc[rows, "source"])) if "source" in index else False


def write_bundle(cfg: TrainConfig, cache, run_dir: Path, trainer, s: dict) -> Path:
    """Load the best weights into the model and save the bundle with thresholds chosen on validation."""
    from safetensors.torch import load_file

    from cxrkit.bundle import save_bundle
    from cxrkit.bundle.synthetic import init_is_synthetic
    from cxrkit.training.checkpoint import BEST_WEIGHTS, VAL_PREDICTIONS

    model = trainer.model
    model.load_state_dict(load_file(str(run_dir / "checkpoints" / BEST_WEIGHTS)))
    with np.load(run_dir / VAL_PREDICTIONS, allow_pickle=False) as val:
        labels, probs = val["labels"], val["probs"]
    names = list(cache.label_names)
    best = next((h for h in s["history"] if h["epoch"] == s["best_epoch"]), {})
    provenance = {
        "git_commit": git_commit(),
        "data_manifest_hash": cache.manifest.get("content_hash"),
        "data_source": cache.manifest.get("source"),
        "synthetic": _trained_on_synthetic_rows(cache, cfg),
        "init_synthetic": init_is_synthetic(cfg.pretrained),
        "data_cache": str(Path(cache.path).resolve()),
        "package_versions": package_versions(),
        "train_config": cfg.to_dict(),
        "seed": cfg.seed,
    }
    metrics = {"split": cfg.val_split, "epoch": best.get("epoch"), "mean_auroc": best.get("val_mean_auroc"),
               "auroc": best.get("val_auroc"), "val_loss": best.get("val_loss"), "select": cfg.select}
    return save_bundle(run_dir / "bundle", model, label_names=names, input_size=cfg.image_size,
                       preresize=cache.size, mean=trainer.mean, std=trainer.std,
                       thresholds=youden_thresholds(labels, probs, names), provenance=provenance, metrics=metrics,
                       extra={"threshold_policy": THRESHOLD_POLICY})


GATE_MAX_IMAGES = 2000  # the hand-crafted gate's fit settles well before this; more only costs time


def fit_training_gate(cfg: TrainConfig, cache, bundle_dir: Path) -> str:
    """Fit the bundle's quality gate (``lr-handcrafted``) on up to GATE_MAX_IMAGES training films of the cache, so
    a trained bundle flags inputs unlike what it learned from instead of passing everything. Returns a line to
    show; a split too small for the gate's cross-fitting is reported, not fatal."""
    from cxrkit.deploy.quality import QualityGateError, fit_quality_gate

    rows = cache.rows(cfg.train_split)
    if len(rows) > GATE_MAX_IMAGES:
        rows = np.sort(np.random.default_rng(cfg.seed).choice(rows, GATE_MAX_IMAGES, replace=False))
    films = [np.asarray(cache.images[int(r)]) for r in rows]
    try:
        gate = fit_quality_gate(bundle_dir, films, method="lr-handcrafted", seed=cfg.seed)
    except QualityGateError as exc:
        return f"no quality gate fitted ({exc}); fit one later with `cxr gate fit {bundle_dir} FILMS...`"
    return (f"quality gate (lr-handcrafted) fitted on {len(films)} training films, threshold {gate.threshold:.3f}; "
            "--no-quality-gate skips it, `cxr gate fit` refits it on other films")
