"""Dataset readers with one sample contract, and :func:`open_dataset`, which picks the right one.

Swapping datasets is one line::

    ds = open_dataset("/data/ChestX-ray14")            # NIH layout (or a cxrkit phantom set)
    ds = open_dataset("/data/CheXpert-v1.0-small", uncertainty="chexpert-best")
    ds = open_dataset("/data/my_labels.csv", image_col="file")
    ds = open_dataset("/pacs/export")                  # a folder of DICOM files
    ds = open_dataset(["/data/ChestX-ray14", "/data/CheXpert-v1.0-small"])   # merged, NIH vocabulary
"""
from __future__ import annotations

from pathlib import Path

from cxrkit.data.datasets.base import BOX_COLUMNS, TABLE_COLUMNS, CXRDataset
from cxrkit.data.datasets.chexpert import CheXpertDataset, chexpert_to_nih
from cxrkit.data.datasets.generic import CSVDataset, DicomFolderDataset, find_dicom_files
from cxrkit.data.datasets.merged import MergedDataset
from cxrkit.data.datasets.nih import TABLE_NAMES, NIHDataset, find_nih_table
from cxrkit.data.errors import DatasetError
from cxrkit.data.labels import CHEXPERT_OBSERVATIONS

FORMATS = ("auto", "nih", "chexpert", "csv", "dicom")
_CHEXPERT_CSVS = ("train.csv", "valid.csv")


def _csv_columns(path: Path) -> list[str]:
    import pandas as pd

    try:
        return [str(c).strip() for c in pd.read_csv(path, nrows=0).columns]
    except Exception as exc:  # any failure to read a header means "not this format"; the reader reports it later
        raise DatasetError(f"cannot read the header of {path}: {exc}") from exc


def _csv_kind(path: Path) -> str:
    cols = set(_csv_columns(path))
    if {"Image Index", "Finding Labels"} <= cols:
        return "nih"
    if "Path" in cols and set(CHEXPERT_OBSERVATIONS) <= cols:
        return "chexpert"
    return "csv"


def _chexpert_csv(folder: Path) -> Path | None:
    for name in _CHEXPERT_CSVS:
        for c in [folder / name, *sorted(folder.glob(f"CheXpert-v1.0*/{name}"))]:
            if c.is_file() and _csv_kind(c) == "chexpert":
                return c
    return None


def detect_format(source: Path | str) -> str:
    """'nih', 'chexpert', 'csv' or 'dicom' from what ``source`` holds; DatasetError listing what was looked for."""
    source = Path(source)
    if source.is_file():
        if source.name.lower().endswith((".csv", ".csv.gz")):
            return _csv_kind(source)
        raise DatasetError(f"{source} is a file but not a CSV: pass a dataset folder, a label CSV, or a folder of "
                           "DICOM files")
    if not source.is_dir():
        raise DatasetError(f"dataset not found: {source}")
    if find_nih_table(source) is not None:
        return "nih"
    if _chexpert_csv(source) is not None:
        return "chexpert"
    csvs = sorted(p for p in source.iterdir() if p.name.lower().endswith((".csv", ".csv.gz")))
    if find_dicom_files(source, limit=1)[0]:
        return "dicom"
    if len(csvs) == 1:
        return "csv"
    raise DatasetError(
        f"cannot tell what dataset {source} holds: looked for an NIH table ({', '.join(TABLE_NAMES)}), a CheXpert "
        f"table ({' or '.join(_CHEXPERT_CSVS)} with a 'Path' column, also under CheXpert-v1.0*/), DICOM files "
        f"(by their 'DICM' marker) and a single label CSV (found {len(csvs)}); pass format= explicitly")


def open_dataset(source, format: str = "auto", **kw) -> CXRDataset:
    """Open a dataset folder or label table as a :class:`CXRDataset` (readers take ``**kw``).

    ``source`` may be a folder, a CSV, an existing dataset (returned as is) or a list of these (a
    :class:`MergedDataset`; ``kw`` then goes to the merge, e.g. ``label_names``).
    """
    if isinstance(source, CXRDataset):
        return source
    if isinstance(source, (list, tuple)):
        return MergedDataset([open_dataset(s, format) for s in source], **kw)
    if format not in FORMATS:
        raise DatasetError(f"format={format!r} is not one of {FORMATS}")
    path = Path(source)
    if not path.exists():
        raise DatasetError(f"dataset not found: {path}")
    kind = detect_format(path) if format == "auto" else format
    if kind == "nih":
        if path.is_file():
            kw.setdefault("table", path)
            path = path.parent
        return NIHDataset(path, **kw)
    if kind == "chexpert":
        if path.is_file():
            kw.setdefault("csv", path.resolve())
            path = path.parent
        elif "csv" not in kw:
            found = _chexpert_csv(path)
            if found is not None:
                kw["csv"] = found
        return CheXpertDataset(path, **kw)
    if kind == "csv":
        if path.is_dir():
            csvs = sorted(p for p in path.iterdir() if p.name.lower().endswith((".csv", ".csv.gz")))
            if len(csvs) != 1:
                raise DatasetError(f"format='csv' needs a CSV file; {path} holds {len(csvs)} CSV files")
            path = csvs[0]
        return CSVDataset(path, **kw)
    if path.is_file():
        raise DatasetError(f"format='dicom' needs a folder of DICOM files, not the file {path}")
    return DicomFolderDataset(path, **kw)


__all__ = [
    "CXRDataset", "TABLE_COLUMNS", "BOX_COLUMNS", "NIHDataset", "CheXpertDataset", "CSVDataset",
    "DicomFolderDataset", "MergedDataset", "open_dataset", "detect_format", "chexpert_to_nih",
]
