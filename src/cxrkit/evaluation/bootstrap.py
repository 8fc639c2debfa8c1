"""Patient-clustered bootstrap: resample patients (not images) with replacement, seeded, shared by every metric.

One :class:`ClusterBootstrap` is drawn per evaluation; every metric, subgroup and compared model reuses the same
replicates, so differences (subgroup gaps, model A vs B) get paired intervals for free.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class ClusterBootstrap:
    """``codes[i]``: patient index of image i; ``counts[r, p]``: how often patient p is drawn in replicate r."""

    codes: np.ndarray
    counts: np.ndarray

    @classmethod
    def draw(cls, patient_ids, n_boot: int = 1000, seed: int | np.random.Generator = 0) -> "ClusterBootstrap":
        """Draw ``n_boot`` replicates; each picks as many patients as there are, uniformly with replacement."""
        rng = np.random.default_rng(seed)
        _, codes = np.unique(np.asarray(patient_ids).astype(str), return_inverse=True)
        n_pat = int(codes.max()) + 1 if codes.size else 0
        if n_boot <= 0 or n_pat == 0:
            return cls(codes=codes.astype(np.int64), counts=np.zeros((0, n_pat), np.float32))
        draws = rng.integers(0, n_pat, size=(n_boot, n_pat))
        flat = (draws + (np.arange(n_boot) * n_pat)[:, None]).ravel()
        counts = np.bincount(flat, minlength=n_boot * n_pat).reshape(n_boot, n_pat).astype(np.float32)
        return cls(codes=codes.astype(np.int64), counts=counts)

    @property
    def n_boot(self) -> int:
        return int(self.counts.shape[0])

    def weights(self, idx: np.ndarray | None = None, reps: slice = slice(None)) -> np.ndarray:
        """Image weights (R x len(idx)) of the replicates in ``reps`` for the images ``idx`` (all when None)."""
        codes = self.codes if idx is None else self.codes[idx]
        return self.counts[reps][:, codes]

    def apply(self, fn: Callable[..., np.ndarray | dict], *arrays: np.ndarray, idx: np.ndarray | None = None,
              chunk: int = 250):
        """Evaluate ``fn(*arrays_restricted_to_idx, W)`` over all replicates in memory-bounded chunks.

        ``fn`` returns an (R,) array or a dict of them; the result has the same shape with R = n_boot.
        """
        sub = [a if idx is None else a[idx] for a in arrays]
        parts = [fn(*sub, self.weights(idx, slice(r, r + chunk))) for r in range(0, self.n_boot, chunk)]
        if not parts:
            return np.zeros(0)
        if isinstance(parts[0], dict):
            return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        return np.concatenate(parts)


def percentile_ci(reps: np.ndarray, alpha: float = 0.05) -> tuple[float, float]:
    """Percentile interval of bootstrap replicates, ignoring undefined (NaN) replicates; NaNs when none are left."""
    reps = np.asarray(reps, dtype=np.float64)
    reps = reps[~np.isnan(reps)]
    if reps.size == 0:
        return float("nan"), float("nan")
    lo, hi = np.percentile(reps, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(lo), float(hi)
