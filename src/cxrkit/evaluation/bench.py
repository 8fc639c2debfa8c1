"""`cxr bench bootstrap`: time the patient-clustered bootstrap of AUROC + AUPRC (+ mean AUROC) at NIH test-set
scale on synthetic scores (goal: 22,000 images x 14 findings x 1,000 replicates in under a minute on 2 cores)."""
from __future__ import annotations

import time

import numpy as np


def synthetic_scores(n_images: int, n_classes: int, n_patients: int, prevalence: float = 0.05,
                     seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels N x C, scores N x C with ties from 3-decimal rounding, patient ids N) - informative scores."""
    rng = np.random.default_rng(seed)
    Y = (rng.random((n_images, n_classes)) < prevalence).astype(np.float64)
    S = np.round(1 / (1 + np.exp(-(rng.normal(size=Y.shape) + 1.2 * Y - 2))), 3)
    return Y, S, rng.integers(0, n_patients, size=n_images).astype(str)


def bench_bootstrap(n_images: int = 22000, n_classes: int = 14, n_boot: int = 1000, n_patients: int | None = None,
                    seed: int = 0) -> dict:
    """Wall time of drawing the replicates and of the full per-class + mean-AUROC bootstrap, on this machine."""
    from cxrkit.evaluation.bootstrap import ClusterBootstrap
    from cxrkit.evaluation.summary import ranking_summary

    n_patients = n_patients or max(1, n_images // 3)  # NIH's official test list: ~2.8 images per patient
    Y, S, pids = synthetic_scores(n_images, n_classes, n_patients, seed=seed)
    names = [f"finding_{c}" for c in range(n_classes)]
    t0 = time.perf_counter()
    boot = ClusterBootstrap.draw(pids, n_boot, seed)
    t1 = time.perf_counter()
    summary, _ = ranking_summary(Y, S, names, boot)
    t2 = time.perf_counter()
    return {"n_images": n_images, "n_classes": n_classes, "n_boot": n_boot, "n_patients": int(len(set(pids))),
            "draw_s": round(t1 - t0, 3), "metrics_s": round(t2 - t1, 3), "total_s": round(t2 - t0, 3),
            "mean_auroc": summary["mean_auroc"], "mean_auroc_ci": [summary["mean_auroc_ci_low"],
                                                                   summary["mean_auroc_ci_high"]]}
