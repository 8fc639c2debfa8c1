"""Small helpers shared by the readers: table assembly, missing-file policy, CSV loading."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from cxrkit.data.datasets.base import TABLE_COLUMNS
from cxrkit.data.errors import DatasetError

log = logging.getLogger(__name__)

MISSING_POLICIES = ("skip", "error", "keep")


def read_csv(path: Path | str, *, what: str, **kw) -> pd.DataFrame:
    """pandas.read_csv with file/format problems turned into DatasetError (compression inferred from suffix)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{what} not found: {path}")
    try:
        df = pd.read_csv(path, **kw)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError, EOFError,
            ValueError) as exc:
        raise DatasetError(f"cannot read {what} {path}: {exc}") from exc
    df.columns = [str(c).strip() for c in df.columns]
    return df


def finish_table(df: pd.DataFrame, labels: np.ndarray, label_names, *, source: str) -> pd.DataFrame:
    """Return a table with every TABLE_COLUMNS column (defaults: NaN / None), one float32 column per label,
    and a ``source`` column; extra columns already in ``df`` are kept after those."""
    n = len(df)
    out = {}
    for col in TABLE_COLUMNS:
        if col in df.columns:
            out[col] = df[col].to_numpy()
        elif col in ("age", "spacing_x", "spacing_y", "frame_w", "frame_h"):
            out[col] = np.full(n, np.nan)
        else:
            out[col] = np.full(n, None, dtype=object)
    for col in ("age", "spacing_x", "spacing_y", "frame_w", "frame_h"):
        out[col] = pd.to_numeric(pd.Series(out[col]), errors="coerce").to_numpy(dtype=np.float64)
    for col in ("image_id", "patient_id", "path"):
        out[col] = pd.Series(out[col]).astype(str).to_numpy(dtype=object)
    labels = np.asarray(labels, dtype=np.float32).reshape(n, len(label_names))
    for j, name in enumerate(label_names):
        out[name] = labels[:, j]
    out["source"] = np.full(n, source, dtype=object)
    extra = [c for c in df.columns if c not in out]
    table = pd.DataFrame(out)
    for c in extra:
        table[c] = df[c].to_numpy()
    dup = table["image_id"].duplicated()
    if dup.any():
        raise DatasetError(f"{int(dup.sum())} duplicate image ids, e.g. {list(table.loc[dup, 'image_id'][:5])}; "
                           "each image must appear once in the label table")
    return table


def apply_missing(exists: np.ndarray, names: pd.Series, policy: str, *, where: str) -> tuple[np.ndarray, int]:
    """Rows to keep under the missing-file ``policy``; returns (keep mask, number dropped).

    ``skip`` drops rows whose file is absent (warning), ``error`` raises DatasetError listing them, ``keep`` keeps
    them all (label-only analyses of a table without its images).
    """
    if policy not in MISSING_POLICIES:
        raise DatasetError(f"missing={policy!r} is not a policy; use one of {MISSING_POLICIES}")
    exists = np.asarray(exists, dtype=bool)
    n_missing = int((~exists).sum())
    if policy == "keep" or n_missing == 0:
        return np.ones(len(exists), dtype=bool), 0
    examples = list(names[~exists][:5])
    if policy == "error":
        raise DatasetError(f"{n_missing} of {len(exists)} images listed in the table are missing under {where}, "
                           f"e.g. {examples}; download them, or pass missing='skip' to use only those present")
    if n_missing == len(exists):
        raise DatasetError(f"none of the {len(exists)} images listed in the table were found under {where} "
                           f"(e.g. {examples}); check the folder, or pass missing='keep' to read labels only")
    log.warning("%d of %d images listed in the table are not under %s (e.g. %s); using the %d present",
                n_missing, len(exists), where, examples, len(exists) - n_missing)
    return exists, n_missing
