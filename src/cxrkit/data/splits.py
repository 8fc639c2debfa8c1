"""Patient-level train/val/test splits, stratified on findings, and the leakage check every split must pass.

All of a patient's images go to one split (images of one patient are strongly correlated: splitting them leaks the
test set into training). Within that constraint, :func:`patient_split` keeps each finding's prevalence close to
the overall one using iterative stratification (Sechidis et al., ECML 2011) over per-patient positive-image counts,
rarest label first, and fills the remaining image quota with patients who have no positive finding.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from cxrkit.data.errors import DatasetError, LeakageError

SPLITS = ("train", "val", "test")


def _check_fractions(fractions) -> np.ndarray:
    try:
        fr = np.asarray(fractions, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise DatasetError(f"fractions={fractions!r} must be three numbers (train, val, test)") from exc
    if fr.shape != (3,) or not np.isfinite(fr).all() or (fr < 0).any() or abs(fr.sum() - 1.0) > 1e-6:
        raise DatasetError(f"fractions={tuple(fractions)!r} must be three non-negative numbers (train, val, test) "
                           "summing to 1, e.g. (0.7, 0.1, 0.2)")
    return fr


def _require(table: pd.DataFrame, cols, what: str) -> None:
    missing = [c for c in cols if c not in table.columns]
    if missing:
        raise DatasetError(f"{what}: table lacks columns {missing}; present: {list(table.columns)[:30]}")


def _stratify(counts: np.ndarray, n_img: np.ndarray, fr: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Assign P patients to splits. counts: (P, C) positive images per label; n_img: (P,) images per patient."""
    n_patients, n_labels = counts.shape
    open_splits = np.flatnonzero(fr > 0)
    assigned = np.full(n_patients, -1, dtype=np.int64)
    order = rng.permutation(n_patients)
    rank = np.empty(n_patients, dtype=np.int64)
    rank[order] = np.arange(n_patients)
    need_img = fr * n_img.sum()
    need_lab = fr[:, None] * counts.sum(axis=0)[None, :]
    need_lab[fr == 0] = -np.inf  # a split asked to be empty never wins a patient
    need_img[fr == 0] = -np.inf
    has = counts > 0
    todo = np.ones(n_labels, dtype=bool)
    while todo.any():
        left = has[assigned < 0][:, todo].sum(axis=0)
        if not left.any():
            break
        label = np.flatnonzero(todo)[np.argmin(np.where(left > 0, left, np.iinfo(np.int64).max))]
        todo[label] = False
        members = np.flatnonzero(has[:, label] & (assigned < 0))
        for p in members[np.argsort(rank[members])]:
            d = need_lab[:, label]
            cand = np.flatnonzero(d == d.max())
            if len(cand) > 1:
                cand = cand[need_img[cand] == need_img[cand].max()]
            s = cand[0] if len(cand) == 1 else rng.choice(cand)
            assigned[p] = s
            need_lab[s] -= counts[p]
            need_img[s] -= n_img[p]
    # patients without any positive finding fill each split's remaining image quota, in random order
    rest = order[assigned[order] < 0]
    if len(rest):
        quota = np.zeros(len(fr))
        quota[open_splits] = np.clip(need_img[open_splits], 0, None)
        if quota.sum() <= 0:
            quota[open_splits] = fr[open_splits]
        sizes = n_img[rest].astype(np.float64)
        bounds = np.cumsum(quota) / quota.sum() * sizes.sum()
        mid = np.cumsum(sizes) - sizes / 2
        idx = np.minimum(np.searchsorted(bounds, mid, side="right"), len(fr) - 1)
        # rounding at a boundary must not land on a split asked to be empty
        idx = np.where(fr[idx] > 0, idx, open_splits[np.searchsorted(open_splits, idx).clip(0, len(open_splits) - 1)])
        assigned[rest] = idx
    return assigned


def patient_split(table: pd.DataFrame, label_names, fractions=(0.7, 0.1, 0.2), seed: int = 0, *,
                  patient_col: str = "patient_id") -> pd.Series:
    """A "train"/"val"/"test" label per row (index aligned with ``table``), patient-level and label-stratified.

    Deterministic for a seed and independent of the table's row order. A label counts as positive at >= 0.5
    (NaN = unknown = not positive). ``fractions`` are of images; with few patients they are met approximately.
    """
    fr = _check_fractions(fractions)
    label_names = list(label_names)
    _require(table, [patient_col, *label_names], "patient_split")
    if len(table) == 0:
        return pd.Series([], index=table.index, dtype=object, name="split")
    if table[patient_col].isna().any():
        raise DatasetError(f"{int(table[patient_col].isna().sum())} rows have no {patient_col}; every image needs "
                           "a patient to be split by patient")
    codes, _ = pd.factorize(table[patient_col].astype(str), sort=True)
    n_patients = int(codes.max()) + 1
    y = table[label_names].to_numpy(dtype=np.float32) if label_names else np.zeros((len(table), 0), np.float32)
    pos = np.nan_to_num(y, nan=0.0) >= 0.5
    counts = np.zeros((n_patients, len(label_names)), dtype=np.float64)
    np.add.at(counts, codes, pos)
    n_img = np.bincount(codes, minlength=n_patients)
    assigned = _stratify(counts, n_img, fr, np.random.default_rng(seed))
    return pd.Series(np.asarray(SPLITS, dtype=object)[assigned[codes]], index=table.index, name="split")


def official_or_patient_split(table: pd.DataFrame, label_names, fractions=(0.7, 0.1, 0.2), seed: int = 0, *,
                              official_col: str = "official_split", patient_col: str = "patient_id") -> pd.Series:
    """Keep a source's official val/test split and carve what it lacks out of its training part by patient.

    NIH ships train_val/test: test stays as given and val is carved from train_val by patient (val's share of the
    pool is fractions[1] / (fractions[0] + fractions[1])). Without an official split this is :func:`patient_split`.
    Raises LeakageError if the official split itself puts a patient in two splits.
    """
    fr = _check_fractions(fractions)
    _require(table, [patient_col], "official_or_patient_split")
    official = table[official_col] if official_col in table.columns else None
    if official is None or official.isna().all():
        return patient_split(table, label_names, fr, seed, patient_col=patient_col)
    bad = official.notna() & ~official.isin(SPLITS)
    if bad.any():
        raise DatasetError(f"column {official_col!r} holds {sorted(set(official[bad].astype(str)))[:5]}; "
                           f"expected {SPLITS} or empty")
    check_leakage(table[official.notna()], split_col=official_col, patient_col=patient_col, what="official split")
    fixed_by_patient = (table.loc[official.isin(("val", "test")), [patient_col, official_col]]
                        .drop_duplicates(patient_col).set_index(patient_col)[official_col])
    fixed = table[patient_col].map(fixed_by_patient)
    out = pd.Series(fixed.to_numpy(dtype=object), index=table.index, name="split")
    pool = fixed.isna()
    if pool.any():
        sub = fr.copy()
        for k, name in enumerate(SPLITS[1:], start=1):
            if (official == name).any():
                sub[k] = 0.0  # the source already provides this split
        sub = sub / sub.sum() if sub.sum() > 0 else np.array([1.0, 0.0, 0.0])
        out[pool] = patient_split(table[pool], label_names, sub, seed, patient_col=patient_col)
    check_leakage(pd.DataFrame({patient_col: table[patient_col], "split": out}), patient_col=patient_col)
    return out


def check_leakage(table_or_index: pd.DataFrame, split_col: str = "split", patient_col: str = "patient_id", *,
                  what: str = "split") -> None:
    """Raise :class:`LeakageError` if any patient has rows in more than one split (rows without a split ignored)."""
    _require(table_or_index, [split_col, patient_col], "check_leakage")
    df = table_or_index[[patient_col, split_col]].dropna()
    n_splits = df.groupby(patient_col, sort=True)[split_col].nunique()
    leaking = n_splits.index[n_splits > 1]
    if len(leaking):
        examples = df[df[patient_col].isin(leaking[:5])].groupby(patient_col)[split_col].unique()
        shown = "; ".join(f"{p}: {sorted(map(str, s))}" for p, s in examples.items())
        raise LeakageError(f"{len(leaking)} patients appear in more than one {what} (e.g. {shown}); every patient's "
                           "images must stay in one split - re-split with cxrkit.data.splits.patient_split")
