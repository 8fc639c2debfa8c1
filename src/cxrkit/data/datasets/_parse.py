"""Vectorised parsers for the cells of label tables (finding strings, ages, sex, views, CheXpert values).

Every parser takes a pandas Series and either returns clean values or raises :class:`DatasetError` naming the bad
cells: garbage in a table is a user error, never a traceback.
"""
from __future__ import annotations

import logging
import re

import numpy as np
import pandas as pd

from cxrkit.data.errors import DatasetError
from cxrkit.data.labels import NIH_FINDINGS

log = logging.getLogger(__name__)

NO_FINDING = "No Finding"
MAX_AGE_YEARS = 130.0


def _key(name: str) -> str:
    # "Pleural Thickening", "pleural_thickening" and "Pleural_Thickening" are one finding
    return re.sub(r"[\s_\-]+", " ", name.strip()).lower()


# NIH finding spellings seen in the wild: the BBox list says "Infiltrate" for Data_Entry's "Infiltration".
_NIH_ALIASES = {_key(n): n for n in NIH_FINDINGS}
_NIH_ALIASES.update({_key("Infiltrate"): "Infiltration", _key("Pleural Effusion"): "Effusion"})


def canonical_nih_name(name: str) -> str | None:
    """The NIH spelling of a finding name (case/underscore-insensitive, known aliases), or None if unknown."""
    return _NIH_ALIASES.get(_key(name)) if isinstance(name, str) else None


def _examples(values, k: int = 5) -> str:
    vals = list(dict.fromkeys(map(repr, values)))
    more = f" (+{len(vals) - k} more)" if len(vals) > k else ""
    return ", ".join(vals[:k]) + more


def parse_finding_labels(col: pd.Series, *, column: str = "Finding Labels") -> pd.DataFrame:
    """Parse NIH ``Finding Labels`` cells ('|'-separated, 'No Finding') into an (N, 14) 0/1 float32 frame.

    Columns are :data:`NIH_FINDINGS`. Unknown tokens, empty cells and 'No Finding' mixed with findings raise
    :class:`DatasetError`.
    """
    s = col.astype("string").str.strip()
    empty = s.isna() | (s == "")
    if empty.any():
        idx = list(s.index[empty][:5])
        raise DatasetError(f"{int(empty.sum())} empty '{column}' cells (rows {idx}); every image needs its findings "
                           f"or '{NO_FINDING}'")
    lists = s.str.split("|")
    rows = np.repeat(np.arange(len(s)), lists.str.len().to_numpy())
    tokens = lists.explode().str.strip()
    vocab = (*NIH_FINDINGS, NO_FINDING)
    # resolve each distinct spelling once; the table has ~1k distinct cells but 112k rows
    lookup = {t: _NIH_ALIASES.get(_key(t), NO_FINDING if _key(t) == _key(NO_FINDING) else None)
              for t in tokens.unique()}
    keys = tokens.map(lookup)
    unknown = keys.isna().to_numpy()
    if unknown.any():
        raise DatasetError(f"unknown finding names in '{column}': {_examples(tokens[unknown])}; expected "
                           f"'|'-separated names from {list(NIH_FINDINGS)} or '{NO_FINDING}'")
    cols = keys.map({n: i for i, n in enumerate(vocab)}).to_numpy(dtype=np.int64)
    onehot = np.zeros((len(s), len(vocab)), dtype=np.float32)
    onehot[rows, cols] = 1.0
    mixed = (onehot[:, -1] > 0) & (onehot[:, :-1].sum(axis=1) > 0)
    if mixed.any():
        raise DatasetError(f"{int(mixed.sum())} '{column}' cells combine '{NO_FINDING}' with findings, e.g. "
                           f"{_examples(s[mixed])}")
    return pd.DataFrame(onehot[:, :-1], index=s.index, columns=list(NIH_FINDINGS))


_AGE_RE = re.compile(r"^\s*(\d+(?:\.\d*)?)\s*([YMWD]?)\s*$", re.IGNORECASE)
_AGE_UNIT_YEARS = {"": 1.0, "Y": 1.0, "M": 1 / 12, "W": 7 / 365.25, "D": 1 / 365.25}


def parse_age(col: pd.Series, *, column: str = "age") -> np.ndarray:
    """Ages in float years from numbers or DICOM-style strings ('058Y', '6M', '3W', '10D'); blank -> NaN.

    Unparseable cells raise :class:`DatasetError`; implausible values (negative or > 130 years, as a few rows of
    the first NIH release have) become NaN with a logged warning, since they are data-entry slips, not bad files.
    """
    if pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col):
        years = col.to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        s = col.astype("string").str.strip()
        blank = s.isna() | (s == "")
        parts = s.str.extract(_AGE_RE)
        bad = ~blank & parts[0].isna()
        if bad.any():
            raise DatasetError(f"{int(bad.sum())} unreadable ages in column '{column}', e.g. {_examples(s[bad])}; "
                               "expected a number of years or a DICOM age like '058Y', '6M', '3W', '10D'")
        unit = parts[1].fillna("").str.upper().map(_AGE_UNIT_YEARS)
        years = (pd.to_numeric(parts[0], errors="coerce") * unit).to_numpy(dtype=np.float64, na_value=np.nan)
    implausible = ~np.isnan(years) & ((years < 0) | (years > MAX_AGE_YEARS) | ~np.isfinite(years))
    if implausible.any():
        log.warning("%d implausible ages in column '%s' (e.g. %s) set to unknown", int(implausible.sum()), column,
                    _examples(years[implausible]))
        years = np.where(implausible, np.nan, years)
    return years


_SEX = {"m": "M", "male": "M", "f": "F", "female": "F"}
_SEX_UNKNOWN = {"", "o", "u", "unknown", "other", "nan", "none"}


def parse_sex(col: pd.Series, *, column: str = "sex") -> pd.Series:
    """'M'/'F'/None from M, F, Male, Female (any case); blank/Unknown/O -> None; anything else DatasetError."""
    s = col.astype("string").str.strip().str.lower()
    out = s.map(_SEX, na_action="ignore")
    bad = s.notna() & out.isna() & ~s.isin(_SEX_UNKNOWN)
    if bad.any():
        raise DatasetError(f"{int(bad.sum())} unreadable sex values in column '{column}', e.g. "
                           f"{_examples(col[bad])}; expected M/F/Male/Female (blank or Unknown for unknown)")
    return out.astype(object).where(out.notna(), None)


def parse_view(col: pd.Series) -> pd.Series:
    """Upper-cased view codes ('PA', 'AP', 'LL', 'LATERAL', ...); blank -> None. Any label is accepted."""
    s = col.astype("string").str.strip().str.upper()
    s = s.where(s != "")
    return s.astype(object).where(s.notna(), None)


def parse_tri_state(frame: pd.DataFrame) -> np.ndarray:
    """CheXpert-style label cells -> float64 array with values in {1, 0, -1, NaN} (blank = NaN).

    Accepts numbers and numeric strings ('1', '1.0', '-1', ''); anything else raises :class:`DatasetError` naming
    the column and examples.
    """
    out = np.empty(frame.shape, dtype=np.float64)
    for j, name in enumerate(frame.columns):
        col = frame[name]
        if pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col):
            v = col.to_numpy(dtype=np.float64, na_value=np.nan)
        else:
            s = col.astype("string").str.strip()
            v = pd.to_numeric(s.where(s != ""), errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
            unparsed = np.isnan(v) & (s.notna() & (s != "")).to_numpy()
            if unparsed.any():
                raise DatasetError(f"column '{name}' has non-numeric label values, e.g. "
                                   f"{_examples(col[unparsed])}; expected 1, 0, -1 (uncertain) or blank")
        bad = ~np.isnan(v) & ~np.isin(v, (1.0, 0.0, -1.0))
        if bad.any():
            raise DatasetError(f"column '{name}' has label values other than 1, 0, -1 or blank, e.g. "
                               f"{_examples(col[bad])}")
        out[:, j] = v
    return out


def require_columns(df: pd.DataFrame, required, *, what: str) -> None:
    """Raise DatasetError naming the missing columns, the expected ones and those present."""
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DatasetError(f"{what} lacks columns {missing}; expected {list(required)}, found "
                           f"{[str(c) for c in df.columns][:30]}")
