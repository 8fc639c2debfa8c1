"""Datasets without a named layout: a CSV of image paths + labels, and a folder of DICOM files."""
from __future__ import annotations

import hashlib
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from cxrkit.data.datasets._common import apply_missing, finish_table, read_csv
from cxrkit.data.datasets._parse import parse_age, parse_sex, parse_tri_state, parse_view
from cxrkit.data.datasets.base import CXRDataset
from cxrkit.data.errors import CxrError, DatasetError
from cxrkit.data.labels import CHEXPERT_TO_NIH, NIH_FINDINGS, NIH_TO_CHEXPERT, harmonise

log = logging.getLogger(__name__)

# both directions, so a CSV labelled in either vocabulary fills the other's shared findings
BOTH_WAYS = {**CHEXPERT_TO_NIH, **NIH_TO_CHEXPERT}
UNCERTAIN_POLICIES = {"nan": np.nan, "zeros": 0.0, "ones": 1.0}
_PATIENT_COLS = ("patient_id", "patient", "patientid", "patient id", "subject_id")


def _find_col(df: pd.DataFrame, name: str | None, *, candidates=()) -> str | None:
    """The column called ``name`` (exact, then case-insensitive) or the first of ``candidates`` present."""
    lower = {c.lower(): c for c in df.columns}
    for n in ([name] if name else []) + list(candidates):
        if n in df.columns:
            return n
        if n.lower() in lower:
            return lower[n.lower()]
    return None


def targets_from_codes(codes: np.ndarray, uncertain: str) -> np.ndarray:
    """1/0/-1/NaN codes -> targets, with -1 mapped by the ``uncertain`` policy (nan/zeros/ones)."""
    if uncertain not in UNCERTAIN_POLICIES:
        raise DatasetError(f"uncertain={uncertain!r} is not a policy; use one of {list(UNCERTAIN_POLICIES)}")
    out = codes.astype(np.float32)
    out[codes == -1.0] = UNCERTAIN_POLICIES[uncertain]
    return out


class CSVDataset(CXRDataset):
    """A CSV with one row per image: a path column, label columns (1 / 0 / -1 / blank), optional metadata.

    Args:
        csv: the table (``.csv`` or ``.csv.gz``).
        image_col: column holding image paths (absolute, or relative to ``root``, default the CSV's folder).
        label_cols: label columns; default every column that is not the image, id, patient or metadata column.
        label_names: vocabulary of the returned table (default ``label_cols``); NIH <-> CheXpert shared findings
            are mapped, names without a source stay NaN.
        patient_col: patient key column; default the first of patient_id/patient/subject_id present, else each
            image counts as its own patient (a warning: splits are then per image, not per patient).
        uncertain: what -1 means: ``"nan"`` (unknown, default), ``"zeros"`` or ``"ones"``.
        missing: rows whose image is absent: ``"skip"`` (default), ``"error"``, ``"keep"``.
    """

    source = "csv"

    def __init__(self, csv: Path | str, *, image_col: str = "path", label_cols=None, label_names=None,
                 patient_col: str | None = None, root: Path | str | None = None, id_col: str | None = None,
                 age_col: str = "age", sex_col: str = "sex", view_col: str = "view", uncertain: str = "nan",
                 missing: str = "skip", source: str | None = None):
        csv = Path(csv)
        df = read_csv(csv, what="label CSV", low_memory=False)
        root = Path(root) if root is not None else csv.resolve().parent
        img = _find_col(df, image_col)
        if img is None:
            raise DatasetError(f"label CSV {csv} has no image column {image_col!r}; columns present: "
                               f"{list(df.columns)[:30]} (pass image_col=)")
        pcol = _find_col(df, patient_col, candidates=() if patient_col else _PATIENT_COLS)
        if patient_col and pcol is None:
            raise DatasetError(f"label CSV {csv} has no patient column {patient_col!r}; columns present: "
                               f"{list(df.columns)[:30]}")
        icol = _find_col(df, id_col) if id_col else None
        if id_col and icol is None:
            raise DatasetError(f"label CSV {csv} has no id column {id_col!r}; columns present: {list(df.columns)[:30]}")
        meta = {k: _find_col(df, c) for k, c in (("age", age_col), ("sex", sex_col), ("view", view_col))}
        used = {img, pcol, icol, *meta.values()} - {None}
        if label_cols is None:
            label_cols = [c for c in df.columns if c not in used and not c.lower().startswith("unnamed:")]
        label_cols = list(label_cols)
        absent = [c for c in label_cols if c not in df.columns]
        if absent or not label_cols:
            raise DatasetError(f"label CSV {csv}: label columns {absent or '(none)'} not found; columns present: "
                               f"{list(df.columns)[:30]} (pass label_cols=)")
        label_names = tuple(label_names) if label_names is not None else tuple(label_cols)

        rel = df[img].astype("string").str.strip()
        if rel.isna().any() or (rel == "").any():
            raise DatasetError(f"{int((rel.isna() | (rel == '')).sum())} rows of {csv} have an empty {img!r} cell")
        base = str(root.resolve())
        paths = rel.astype(str).map(lambda p: os.path.normpath(os.path.join(base, p)))  # absolute p stays as is
        exists = paths.map(os.path.exists).to_numpy() if missing != "keep" else np.ones(len(df), dtype=bool)
        keep, self.n_missing = apply_missing(exists, rel, missing, where=str(root))
        df, rel, paths = (x[keep].reset_index(drop=True) for x in (df, rel, paths))

        codes = parse_tri_state(df[label_cols])
        labels = harmonise(targets_from_codes(codes, uncertain), label_cols, label_names, BOTH_WAYS)
        image_id = df[icol].astype(str) if icol else rel.astype(str)
        if pcol is None:
            log.warning("%s has no patient column: each image is its own patient, so splits cannot keep a "
                        "patient's images together (pass patient_col=)", csv)
        table = pd.DataFrame({
            "image_id": image_id,
            "patient_id": df[pcol].astype(str).str.strip() if pcol else image_id,
            "path": paths,
            "age": parse_age(df[meta["age"]], column=meta["age"]) if meta["age"] else np.nan,
            "sex": parse_sex(df[meta["sex"]], column=meta["sex"]) if meta["sex"] else None,
            "view": parse_view(df[meta["view"]]) if meta["view"] else None,
        })
        source = source or self.source
        super().__init__(finish_table(table, labels, label_names, source=source), label_names, source=source,
                         root=root)


def is_dicom_file(path: Path | str) -> bool:
    """True if the file carries the DICOM Part 10 magic ('DICM' after the 128-byte preamble)."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def find_dicom_files(folder: Path, *, limit: int | None = None) -> tuple[list[Path], int]:
    """DICOM files under ``folder`` (recursive, sorted, by magic bytes not extension) and how many others."""
    found, others = [], 0
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        for name in sorted(filenames):
            p = Path(dirpath) / name
            if is_dicom_file(p):
                found.append(p)
                if limit is not None and len(found) >= limit:
                    return found, others
            else:
                others += 1
    return found, others


def opaque_key(value: str) -> str:
    """An irreversible key for an identifier (PatientID): the first 16 hex digits of its sha256."""
    return hashlib.sha256(value.encode("utf-8", "surrogateescape")).hexdigest()[:16]


def _header(path: Path, verify: bool) -> tuple[dict, dict]:
    """(ids, meta) of one DICOM file. ids: hashed patient key, SOPInstanceUID; meta: read_image_with_meta's keys."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        with warnings.catch_warnings():  # pydicom warns about every oddity of a malformed file; we report one reason
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            rows, cols = ds.get("Rows"), ds.get("Columns")
    except (InvalidDicomError, OSError, ValueError, TypeError, KeyError, IndexError, EOFError, AttributeError) as exc:
        raise DatasetError(f"unreadable DICOM header: {exc}") from exc
    if not isinstance(rows, int) or not isinstance(cols, int) or rows <= 0 or cols <= 0:
        raise DatasetError("DICOM header has no image size (Rows/Columns): not an image object")
    if verify:
        from cxrkit.data.decode import read_image_with_meta

        _, meta = read_image_with_meta(path)
    else:
        from cxrkit.data.dicom import dicom_meta

        meta = dicom_meta(ds)
    pid = str(ds.get("PatientID", "") or "").strip()
    study = str(ds.get("StudyInstanceUID", "") or "").strip()
    ids = {"patient": opaque_key(pid) if pid else (opaque_key("study:" + study) if study else None),
           "sop": str(ds.get("SOPInstanceUID", "") or "").strip() or None}
    return ids, meta


class DicomFolderDataset(CXRDataset):
    """Every DICOM file under a folder (recursive; found by magic bytes), metadata from the headers.

    PatientID is used only as an opaque key (sha256, 16 hex digits); names and birth dates are never read into the
    table. Files that are not chest radiographs by header (modality not CR/DX/..., body part not CHEST) and
    unreadable files are listed in ``.problems`` (dicts with ``path`` and ``reason``); non-chest files are kept or
    skipped per ``non_chest``; unreadable ones are always skipped. Nothing here is fatal except an empty folder.

    Args:
        folder: the folder to scan.
        label_names: label vocabulary; labels are NaN (unknown) unless ``labels_csv`` is given.
        labels_csv: CSV keyed by ``SOPInstanceUID`` or ``filename`` (base name or path relative to ``folder``)
            with label columns named like ``label_names`` (1 / 0 / -1 / blank; -1 -> NaN).
        non_chest: ``"skip"`` (default) or ``"keep"`` files whose header says they are not chest radiographs.
        verify: fully decode every file now (slow, but finds corrupt pixel data up front) instead of headers only.
        progress: show a progress bar while scanning.
    """

    source = "dicom"

    def __init__(self, folder: Path | str, *, label_names=NIH_FINDINGS, labels_csv: Path | str | None = None,
                 non_chest: str = "skip", verify: bool = False, progress: bool = True, source: str | None = None):
        from tqdm.auto import tqdm

        from cxrkit.data.dicom import is_chest_radiograph_header

        folder = Path(folder)
        if not folder.is_dir():
            raise DatasetError(f"DICOM folder not found: {folder}")
        if non_chest not in ("skip", "keep"):
            raise DatasetError(f"non_chest={non_chest!r}: use 'skip' or 'keep'")
        files, self.n_other_files = find_dicom_files(folder)
        if not files:
            raise DatasetError(f"no DICOM files under {folder} (looked for the 'DICM' marker at byte 128 in "
                               f"{self.n_other_files} files)")
        self.problems: list[dict] = []
        rows = []
        for path in tqdm(files, desc="scanning DICOM headers", unit="file", disable=not progress):
            try:
                ids, meta = _header(path, verify)
            except CxrError as exc:  # DatasetError / ImageError: the file is reported, the scan goes on
                self.problems.append({"path": str(path), "reason": str(getattr(exc, "reason", exc))})
                continue
            ok, reason = is_chest_radiograph_header(meta)
            if not ok:
                self.problems.append({"path": str(path),
                                      "reason": f"not a frontal chest radiograph by its header: {reason}"})
                if non_chest == "skip":
                    continue
            rel = path.relative_to(folder).as_posix()
            spacing = meta.get("pixel_spacing") or (np.nan, np.nan)
            rows.append({"image_id": rel, "patient_id": ids["patient"] or opaque_key("file:" + rel),
                         "path": str(path.resolve()), "age": meta.get("age"), "sex": meta.get("sex"),
                         "view": meta.get("view"), "spacing_y": spacing[0], "spacing_x": spacing[1],
                         "sop_instance_uid": ids["sop"], "modality": meta.get("modality"),
                         "body_part": meta.get("body_part")})
        if self.problems:
            log.warning("%d DICOM files under %s were flagged (see .problems), e.g. %s", len(self.problems), folder,
                        self.problems[0])
        table = pd.DataFrame(rows, columns=["image_id", "patient_id", "path", "age", "sex", "view", "spacing_y",
                                            "spacing_x", "sop_instance_uid", "modality", "body_part"])
        label_names = tuple(label_names)
        labels = np.full((len(table), len(label_names)), np.nan, dtype=np.float32)
        if labels_csv is not None:
            labels = self._join_labels(Path(labels_csv), table, label_names)
        source = source or self.source
        super().__init__(finish_table(table, labels, label_names, source=source), label_names, source=source,
                         root=folder)

    @staticmethod
    def _join_labels(csv: Path, table: pd.DataFrame, label_names) -> np.ndarray:
        df = read_csv(csv, what="DICOM labels CSV", dtype=str, keep_default_na=False)
        key = _find_col(df, None, candidates=("SOPInstanceUID", "sop_instance_uid", "filename", "file", "path"))
        if key is None:
            raise DatasetError(f"labels CSV {csv} needs a key column SOPInstanceUID or filename; columns present: "
                               f"{list(df.columns)[:30]}")
        cols = [c for c in df.columns if c in label_names or c in BOTH_WAYS]
        if not cols:
            raise DatasetError(f"labels CSV {csv} has no label columns named like {list(label_names)}")
        codes = targets_from_codes(parse_tri_state(df[cols].replace("", np.nan)), "nan")
        values = pd.DataFrame(harmonise(codes, cols, label_names, BOTH_WAYS), columns=list(label_names))
        values.index = df[key].astype(str).str.strip()
        if values.index.duplicated().any():
            raise DatasetError(f"labels CSV {csv} lists some {key} values twice, e.g. "
                               f"{list(values.index[values.index.duplicated()][:3])}")
        by_sop = "sop" in key.lower()
        keys = table["sop_instance_uid"] if by_sop else table["image_id"]
        matched = np.array(values.reindex(keys.astype(str)).to_numpy(dtype=np.float32))  # writable copy
        if not by_sop:  # a bare file name matches too
            by_name = values.reindex(table["image_id"].map(lambda p: p.rsplit("/", 1)[-1])).to_numpy(np.float32)
            unmatched = np.isnan(matched).all(axis=1)
            matched[unmatched] = by_name[unmatched]
        n_unmatched = int(np.isnan(matched).all(axis=1).sum())
        if n_unmatched:
            log.warning("%d of %d DICOM files have no row in %s; their labels stay unknown", n_unmatched,
                        len(table), csv)
        return matched
