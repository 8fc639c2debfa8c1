"""CheXpert (Irvin et al., AAAI 2019): ``train.csv`` / ``valid.csv`` with 14 observations coded 1 / 0 / -1 / blank.

* ``1`` positive, ``0`` negative, ``-1`` uncertain (the labeller could not decide), blank = not mentioned in the
  report. cxrkit keeps blank as unknown (NaN, masked in the loss) by default; the CheXpert paper treats blank as
  negative - pass ``blank="zero"`` to do the same.
* Uncertain labels follow a per-observation policy: ``ignore`` (NaN, masked), ``zeros`` (U-Zeros), ``ones``
  (U-Ones), ``lsr``/``lsr-ones`` (U-Ones with label smoothing: a uniform draw in ``lsr_ones_range``, default
  (0.55, 0.85), Pham et al. 2021), ``lsr-zeros`` (uniform in ``lsr_zeros_range``, default (0, 0.3)), or the preset
  ``chexpert-best``: U-Ones for Atelectasis and Edema, U-Zeros for the rest (the simplification of the paper's best
  per-observation choice that the CheXNet-style literature uses). Draws come from a Generator seeded with ``seed``.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from cxrkit.data.datasets._common import apply_missing, finish_table, read_csv
from cxrkit.data.datasets._parse import parse_age, parse_sex, parse_tri_state, parse_view, require_columns
from cxrkit.data.datasets.base import CXRDataset
from cxrkit.data.errors import DatasetError
from cxrkit.data.labels import CHEXPERT_OBSERVATIONS, CHEXPERT_TO_NIH, NIH_FINDINGS, harmonise

log = logging.getLogger(__name__)

POLICIES = ("ignore", "zeros", "ones", "lsr", "lsr-ones", "lsr-zeros")
PRESETS = {"chexpert-best": {o: ("ones" if o in ("Atelectasis", "Edema") else "zeros") for o in CHEXPERT_OBSERVATIONS}}
BLANK_POLICIES = ("nan", "zero")
_PROBE_ROWS = 64


def resolve_policies(uncertainty: str | dict) -> dict[str, str]:
    """Per-observation uncertainty policy from a policy name, a preset, or a dict (unlisted -> ``ignore``)."""
    if isinstance(uncertainty, str):
        if uncertainty in PRESETS:
            return dict(PRESETS[uncertainty])
        if uncertainty not in POLICIES:
            raise DatasetError(f"uncertainty={uncertainty!r} is not a policy; use one of {POLICIES}, a preset "
                               f"{list(PRESETS)}, or a dict observation -> policy")
        return {o: uncertainty for o in CHEXPERT_OBSERVATIONS}
    if not isinstance(uncertainty, dict):
        raise DatasetError(f"uncertainty must be a policy name or a dict, not {type(uncertainty).__name__}")
    unknown = [k for k in uncertainty if k not in CHEXPERT_OBSERVATIONS]
    bad = {k: v for k, v in uncertainty.items() if v not in POLICIES}
    if unknown or bad:
        raise DatasetError(f"bad uncertainty dict: unknown observations {unknown}, unknown policies {bad}; "
                           f"observations are {list(CHEXPERT_OBSERVATIONS)}, policies {POLICIES}")
    return {o: uncertainty.get(o, "ignore") for o in CHEXPERT_OBSERVATIONS}


def parse_uncertainty(text: str) -> str | dict[str, str]:
    """The command line's ``--uncertainty``: a policy or preset name (``ones``, ``chexpert-best``), or a comma list
    of ``Observation=policy`` entries with at most one bare policy for the observations not listed (default
    ``ignore``), e.g. ``zeros,Atelectasis=ones,Edema=ones``. Returns what :func:`resolve_policies` takes."""
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    bare = [p for p in parts if "=" not in p]
    if not parts or len(bare) > 1:
        raise DatasetError(f"--uncertainty {text!r}: give one policy ({', '.join(POLICIES)}), a preset "
                           f"({', '.join(PRESETS)}) or Observation=policy pairs with at most one bare default, "
                           "e.g. zeros,Atelectasis=ones,Edema=ones")
    if len(parts) == 1 and bare:
        return bare[0]
    default = resolve_policies(bare[0]) if bare else {}
    pairs = dict(p.split("=", 1) for p in parts if "=" in p)
    by_lower = {o.lower(): o for o in CHEXPERT_OBSERVATIONS}
    named = {by_lower.get(k.strip().lower(), k.strip()): v.strip() for k, v in pairs.items()}
    resolve_policies(named)  # names the unknown observations / policies
    return {**default, **named}


def apply_uncertainty(values: np.ndarray, names, policies: dict[str, str], *, blank: str = "nan",
                      lsr_ones_range=(0.55, 0.85), lsr_zeros_range=(0.0, 0.3), seed: int = 0) -> np.ndarray:
    """Map raw CheXpert codes (1/0/-1/NaN, shape (N, C) in ``names`` order) to training targets (float32)."""
    if blank not in BLANK_POLICIES:
        raise DatasetError(f"blank={blank!r} is not a policy; use one of {BLANK_POLICIES}")
    for rng_name, (lo, hi) in (("lsr_ones_range", lsr_ones_range), ("lsr_zeros_range", lsr_zeros_range)):
        if not 0.0 <= lo <= hi <= 1.0:
            raise DatasetError(f"{rng_name}={(lo, hi)} must satisfy 0 <= low <= high <= 1")
    out = np.asarray(values, dtype=np.float64).copy()
    if blank == "zero":
        out[np.isnan(out)] = 0.0
    uncertain = out == -1.0
    for j, name in enumerate(names):
        col = uncertain[:, j]
        policy = policies.get(name, "ignore")
        if policy == "ignore":
            out[col, j] = np.nan
        elif policy == "zeros":
            out[col, j] = 0.0
        elif policy == "ones":
            out[col, j] = 1.0
        else:
            lo, hi = lsr_zeros_range if policy == "lsr-zeros" else lsr_ones_range
            # a generator per (seed, column): one column's targets do not depend on the other columns' policies
            draws = np.random.default_rng([seed, j]).uniform(lo, hi, size=len(out))
            out[col, j] = draws[col]
    return out.astype(np.float32)


def _find_csv(root: Path, csv: str | Path) -> Path:
    csv = Path(csv)
    candidates = [csv] if csv.is_absolute() else [root / csv, *sorted(root.glob(f"CheXpert-v1.0*/{csv}")), csv]
    for c in candidates:
        if c.is_file():
            return c
    raise DatasetError(f"CheXpert label table {str(csv)!r} not found; looked at {[str(c) for c in candidates]}")


def _choose_base(root: Path, rel: pd.Series) -> Path:
    # Paths start with 'CheXpert-v1.0-small/...': relative to the folder holding that directory (root's parent
    # when root is the dataset folder itself), or to root when the CSV was moved up a level.
    probe = rel.iloc[:_PROBE_ROWS]
    for base in (root, root.parent):
        if any(os.path.exists(base / p) for p in probe):
            return base
    return root


class CheXpertDataset(CXRDataset):
    """CheXpert's label table plus its JPEGs, with configurable uncertain/blank label policies.

    Args:
        root: the folder holding (or the parent of) ``CheXpert-v1.0-small``; paths in the CSV are resolved
            against root, then root's parent.
        csv: ``"train.csv"``, ``"valid.csv"`` or a path (``.csv.gz`` too).
        uncertainty: policy name, preset (``"chexpert-best"``) or dict observation -> policy (see module doc).
        label_names: vocabulary of the returned table; default CheXpert's 14 or, with ``nih_labels``, NIH's 14
            (harmonised via CHEXPERT_TO_NIH; NIH findings CheXpert does not label stay NaN).
        blank: ``"nan"`` (unknown, default) or ``"zero"`` (negative, as the CheXpert paper).
        frontal_only: drop lateral views.
        missing: rows whose JPEG is absent: ``"skip"`` (default), ``"error"`` or ``"keep"`` (labels only).
    """

    source = "chexpert"

    def __init__(self, root: Path | str, *, csv: str | Path = "train.csv", uncertainty: str | dict = "ignore",
                 label_names=None, nih_labels: bool = False, blank: str = "nan", frontal_only: bool = False,
                 lsr_ones_range=(0.55, 0.85), lsr_zeros_range=(0.0, 0.3), seed: int = 0, missing: str = "skip",
                 source: str | None = None):
        root = Path(root)
        if not root.is_dir():
            raise DatasetError(f"CheXpert folder not found: {root}")
        policies = resolve_policies(uncertainty)
        if label_names is None:
            label_names = NIH_FINDINGS if nih_labels else CHEXPERT_OBSERVATIONS
        csv_path = _find_csv(root, csv)
        df = read_csv(csv_path, what="CheXpert label table", dtype={"Path": str}, low_memory=False)
        require_columns(df, ("Path", *CHEXPERT_OBSERVATIONS), what=f"CheXpert label table {csv_path}")
        rel = df["Path"].astype(str).str.strip()
        if frontal_only:
            if "Frontal/Lateral" in df:
                frontal = df["Frontal/Lateral"].astype(str).str.strip().str.lower().eq("frontal")
            else:
                frontal = rel.str.contains("frontal", case=False, regex=False)
            df, rel = df[frontal.to_numpy()], rel[frontal.to_numpy()]

        base = _choose_base(root, rel)
        paths = (str(base.resolve()) + os.sep + rel).reset_index(drop=True)
        exists = (paths.map(os.path.exists).to_numpy() if missing != "keep" else np.ones(len(paths), dtype=bool))
        keep, self.n_missing = apply_missing(exists, rel.reset_index(drop=True), missing, where=str(base))
        df, rel, paths = (df.reset_index(drop=True)[keep].reset_index(drop=True), rel.reset_index(drop=True)[keep],
                          paths[keep])
        rel, paths = rel.reset_index(drop=True), paths.reset_index(drop=True)

        patient = rel.str.extract(r"(patient\d+)", expand=False)
        if patient.isna().any():
            raise DatasetError(f"{int(patient.isna().sum())} CheXpert paths carry no 'patientNNNNN' folder, e.g. "
                               f"{list(rel[patient.isna()][:3])}; the patient id is read from the path")
        self.raw_labels = parse_tri_state(df[list(CHEXPERT_OBSERVATIONS)])
        targets = apply_uncertainty(self.raw_labels, CHEXPERT_OBSERVATIONS, policies, blank=blank,
                                    lsr_ones_range=lsr_ones_range, lsr_zeros_range=lsr_zeros_range, seed=seed)
        labels = harmonise(targets, CHEXPERT_OBSERVATIONS, label_names, CHEXPERT_TO_NIH)
        self.policies, self.blank = policies, blank
        view = parse_view(df["AP/PA"]) if "AP/PA" in df else pd.Series(None, index=df.index, dtype=object)
        if "Frontal/Lateral" in df:
            lateral = df["Frontal/Lateral"].astype(str).str.strip().str.lower().eq("lateral")
            view = view.where(~(lateral & view.isna()), "LATERAL")
        # CheXpert's hidden test set is not public, so its validation studies (valid.csv) serve as the held-out
        # test split; val is carved from train by patient (official_or_patient_split)
        official = rel.str.extract(r"(?:^|/)(train|valid|test)/", expand=False).map(
            {"train": "train", "valid": "test", "test": "test"})
        table = pd.DataFrame({
            "image_id": rel,
            "patient_id": patient,
            "path": paths,
            "age": parse_age(df["Age"], column="Age") if "Age" in df else np.nan,
            "sex": parse_sex(df["Sex"], column="Sex") if "Sex" in df else None,
            "view": view.to_numpy(),
            "official_split": official.astype(object).where(official.notna(), None).to_numpy(),
        })
        super().__init__(finish_table(table, labels, label_names, source=source or self.source), label_names,
                         source=source or self.source, root=root)


def chexpert_to_nih(labels: np.ndarray, names=CHEXPERT_OBSERVATIONS) -> np.ndarray:
    """Re-express CheXpert targets in the NIH vocabulary (NIH findings CheXpert lacks -> NaN)."""
    return harmonise(labels, names, NIH_FINDINGS, CHEXPERT_TO_NIH)
