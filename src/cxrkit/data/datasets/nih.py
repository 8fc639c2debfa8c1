"""NIH ChestX-ray14 exactly as NIH distributes it (and the phantom set, which copies its layout).

Layout accepted under ``root``::

    Data_Entry_2017.csv | Data_Entry_2017_v2020.csv  (.gz too)   labels + metadata, one row per image
    BBox_List_2017.csv  (optional, .gz too)                       984 radiologist boxes in the 1024-px frame
    train_val_list.txt, test_list.txt  (optional)                 the official patient-disjoint split
    images/*.png | images_001/images/*.png ... images_012/... | *.png directly in root
    phantom.json  (optional)                                      marks a cxrkit phantom set (source, box frame)

NIH's PNGs are 1024 x 1024 resamplings of the original DICOMs; ``OriginalImage[Width,Height]`` and
``OriginalImagePixelSpacing[x,y]`` describe the DICOM. So the table states boxes and spacing in a 1024 frame
(``frame_w = frame_h = 1024``; spacing at 1024 = original spacing x original size / 1024) and
:class:`~cxrkit.data.datasets.base.CXRDataset` rescales both to whatever size the PNG actually decodes to, which
makes downsized copies (e.g. 256 px) come out right.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from cxrkit.data.datasets._common import apply_missing, finish_table, read_csv
from cxrkit.data.datasets._parse import (canonical_nih_name, parse_age, parse_finding_labels, parse_sex, parse_view,
                                         require_columns)
from cxrkit.data.datasets.base import BOX_COLUMNS, CXRDataset
from cxrkit.data.errors import DatasetError
from cxrkit.data.labels import NIH_FINDINGS, NIH_TO_CHEXPERT, harmonise

log = logging.getLogger(__name__)

NIH_FRAME = 1024
NIH_REQUIRED = ("Image Index", "Finding Labels", "Patient ID")
NIH_COLUMNS = ("Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age", "Patient Gender",
               "View Position", "OriginalImage[Width,Height]", "OriginalImagePixelSpacing[x,y]")
TABLE_NAMES = ("Data_Entry_2017_v2020.csv", "Data_Entry_2017_v2020.csv.gz", "Data_Entry_2017.csv",
               "Data_Entry_2017.csv.gz")
BBOX_NAMES = ("BBox_List_2017.csv", "BBox_List_2017.csv.gz")
PHANTOM_MARKER = "phantom.json"


def find_nih_table(root: Path) -> Path | None:
    """The Data_Entry table in ``root`` (the corrected v2020 revision first), or None."""
    for name in TABLE_NAMES:
        if (root / name).is_file():
            return root / name
    found = sorted(root.glob("Data_Entry_2017*.csv*"))
    return found[0] if found else None


def image_dirs(root: Path) -> list[Path]:
    """Folders that may hold NIH PNGs: images/, images_00N/images/ (the release's tarballs), images_00N/, root."""
    dirs = [root / "images"]
    for sub in sorted(root.glob("images_*")):
        dirs += [sub / "images", sub]
    dirs.append(root)
    return [d for d in dirs if d.is_dir()]


def index_files(dirs) -> dict[str, str]:
    """File name -> absolute path over ``dirs`` (first folder wins), via os.scandir (fast on 112k files)."""
    found: dict[str, str] = {}
    for d in dirs:
        with os.scandir(d) as it:
            for e in it:
                if e.name not in found and e.is_file():
                    found[e.name] = str(Path(e.path).resolve())
    return found


def _frame(value) -> float:
    try:
        frame = float(value)
    except (TypeError, ValueError):
        frame = float("nan")
    if not np.isfinite(frame) or frame <= 0:
        raise DatasetError(f"box frame size {value!r} is not a positive number (frame_size= or phantom.json "
                           "'box_frame')")
    return frame


def _official_split(root: Path, names: pd.Series) -> np.ndarray:
    out = np.full(len(names), None, dtype=object)
    lists = {"train": root / "train_val_list.txt", "test": root / "test_list.txt"}
    seen = pd.Series(False, index=names.index)
    for split, path in lists.items():
        if not path.is_file():
            continue
        listed = {ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()}
        hit = names.isin(listed)
        if (hit & seen).any():
            raise DatasetError(f"{int((hit & seen).sum())} images are in both train_val_list.txt and test_list.txt "
                               f"under {root}, e.g. {list(names[hit & seen][:5])}")
        out[hit.to_numpy()] = split
        seen |= hit
    return out


def _pair(df: pd.DataFrame, prefix: str) -> tuple[np.ndarray, np.ndarray]:
    """The two numeric columns pandas makes of a bracketed header like 'OriginalImage[Width,Height]'."""
    cols = list(df.columns)
    first = next((i for i, c in enumerate(cols) if c.replace(" ", "").startswith(prefix)), None)
    if first is None or first + 1 >= len(cols):
        nan = np.full(len(df), np.nan)
        return nan, nan
    a = pd.to_numeric(df[cols[first]], errors="coerce").to_numpy(dtype=np.float64)
    b = pd.to_numeric(df[cols[first + 1]], errors="coerce").to_numpy(dtype=np.float64)
    return a, b


def read_nih_boxes(path: Path | str, label_names) -> pd.DataFrame:
    """NIH ``BBox_List_2017.csv`` -> :data:`BOX_COLUMNS` rows (frame coordinates), labels in ``label_names``."""
    df = read_csv(path, what="NIH box list")
    cols = list(df.columns)
    if len(cols) < 6 or cols[0] != "Image Index" or cols[1] != "Finding Label":
        raise DatasetError(f"NIH box list {path} has columns {cols[:8]}; expected 'Image Index, Finding Label, "
                           "Bbox [x, y, w, h]' (as BBox_List_2017.csv)")
    xywh = df.iloc[:, 2:6].apply(pd.to_numeric, errors="coerce")
    bad = xywh.isna().any(axis=1) | (xywh.iloc[:, 2] <= 0) | (xywh.iloc[:, 3] <= 0)
    if bad.any():
        raise DatasetError(f"{int(bad.sum())} rows of {path} have a missing, non-numeric or empty box, e.g. rows "
                           f"{list(df.index[bad][:5])}")
    labels = df["Finding Label"].map(canonical_nih_name)
    if labels.isna().any():
        raise DatasetError(f"unknown finding names in {path}: {sorted(set(df['Finding Label'][labels.isna()]))[:5]}")
    wanted = set(label_names)
    # a reader asked for CheXpert's vocabulary still gets boxes for the findings the two share
    labels = labels.map(lambda n: n if n in wanted else NIH_TO_CHEXPERT.get(n, n))
    boxes = pd.DataFrame({"image_id": df["Image Index"].astype(str).str.strip(), "label": labels,
                          "x": xywh.iloc[:, 0], "y": xywh.iloc[:, 1], "w": xywh.iloc[:, 2], "h": xywh.iloc[:, 3]})
    return boxes[boxes["label"].isin(wanted)].reset_index(drop=True)[list(BOX_COLUMNS)]


class NIHDataset(CXRDataset):
    """NIH ChestX-ray14 (or a cxrkit phantom set) read from its distributed layout.

    Args:
        root: the dataset folder (see the module docstring for the layout).
        label_names: label vocabulary of the table; names NIH does not label stay NaN.
        table: the Data_Entry CSV (path or DataFrame) when it is not in ``root``.
        bbox_csv: the BBox list when not in ``root``; ``False`` ignores boxes.
        views: keep only these view positions (e.g. ``("PA",)``).
        missing: rows whose PNG is absent: ``"skip"`` (default: warn, drop, count in ``.n_missing``),
            ``"error"`` (DatasetError) or ``"keep"`` (labels-only use).
        source: the ``source`` name; default ``"phantom"`` when ``root/phantom.json`` exists, else ``"nih"``.
        frame_size: pixel frame of boxes and spacing; default 1024 (NIH) or phantom.json's ``box_frame``
            (else its ``size``).
    """

    source = "nih"

    def __init__(self, root: Path | str, *, label_names=NIH_FINDINGS, table: Path | str | pd.DataFrame | None = None,
                 bbox_csv: Path | str | bool | None = None, views=None, missing: str = "skip",
                 source: str | None = None, frame_size: float | None = None):
        root = Path(root)
        if not root.is_dir():
            raise DatasetError(f"NIH dataset folder not found: {root}")
        phantom = self._phantom_info(root)
        source = source or ("phantom" if phantom is not None else "nih")
        phantom_frame = (phantom or {}).get("box_frame") or (phantom or {}).get("size")
        frame = _frame(frame_size or phantom_frame or NIH_FRAME)
        df = self._load_table(root, table)
        names = df["Image Index"].astype(str).str.strip()

        files = index_files(image_dirs(root))
        exists = names.isin(files.keys()).to_numpy()
        keep, self.n_missing = apply_missing(exists, names, missing, where=str(root))
        self.missing_examples: list[str] = list(names[~exists][:5])
        official = _official_split(root, names)
        if views is not None:
            if "View Position" not in df.columns:
                raise DatasetError("views= was given but the NIH table has no 'View Position' column")
            wanted = {str(v).strip().upper() for v in ([views] if isinstance(views, str) else views)}
            keep &= df["View Position"].astype(str).str.strip().str.upper().isin(wanted).to_numpy()
        df, names, official = df[keep].reset_index(drop=True), names[keep].reset_index(drop=True), official[keep]

        no_patient = df["Patient ID"].isna() | (df["Patient ID"].astype(str).str.strip() == "")
        if no_patient.any():
            raise DatasetError(f"{int(no_patient.sum())} rows of the NIH table have no 'Patient ID', e.g. "
                               f"{list(names[no_patient][:5])}; splits need every image's patient")
        nih = parse_finding_labels(df["Finding Labels"]).to_numpy()
        labels = harmonise(nih, NIH_FINDINGS, label_names, NIH_TO_CHEXPERT)
        orig_w, orig_h = _pair(df, "OriginalImage[Width")
        sp_x, sp_y = _pair(df, "OriginalImagePixelSpacing[x")
        base = pd.DataFrame({
            "image_id": names,
            "patient_id": df["Patient ID"].astype(str).str.strip(),
            "path": names.map(files).fillna(str((root / "images").resolve()) + os.sep + names),
            "age": parse_age(df["Patient Age"], column="Patient Age") if "Patient Age" in df else np.nan,
            "sex": parse_sex(df["Patient Gender"], column="Patient Gender") if "Patient Gender" in df else None,
            "view": parse_view(df["View Position"]) if "View Position" in df else None,
            # spacing of the frame the PNG was resampled to (per axis: NIH's resize did not keep the aspect)
            "spacing_x": sp_x * orig_w / frame,
            "spacing_y": sp_y * orig_h / frame,
            "frame_w": frame,
            "frame_h": frame,
            "official_split": official,
            "follow_up": pd.to_numeric(df["Follow-up #"], errors="coerce") if "Follow-up #" in df else np.nan,
            "original_w": orig_w,
            "original_h": orig_h,
        })
        table_out = finish_table(base, labels, label_names, source=source)
        boxes = self._load_boxes(root, bbox_csv, label_names)
        if boxes is not None:
            boxes = boxes[boxes["image_id"].isin(set(table_out["image_id"]))].reset_index(drop=True)
        super().__init__(table_out, label_names, boxes, source=source, root=root)

    @staticmethod
    def _phantom_info(root: Path) -> dict | None:
        marker = root / PHANTOM_MARKER
        if not marker.is_file():
            return None
        try:
            info = json.loads(marker.read_text())
        except (OSError, ValueError) as exc:
            raise DatasetError(f"phantom marker {marker} is not valid JSON ({exc}); regenerate the phantom set") \
                from exc
        if not isinstance(info, dict):
            raise DatasetError(f"phantom marker {marker} should hold a JSON object; regenerate the phantom set")
        return info

    @staticmethod
    def _load_table(root: Path, table) -> pd.DataFrame:
        if isinstance(table, pd.DataFrame):
            df = table.copy()
            df.columns = [str(c).strip() for c in df.columns]
        else:
            path = Path(table) if table is not None else find_nih_table(root)
            if path is None:
                raise DatasetError(f"no NIH label table in {root}: looked for {list(TABLE_NAMES)}; pass table=PATH")
            df = read_csv(path, what="NIH label table", dtype={"Image Index": str, "Finding Labels": str})
        require_columns(df, NIH_REQUIRED, what="NIH label table")
        missing_opt = [c for c in ("Patient Age", "Patient Gender", "View Position") if c not in df.columns]
        if missing_opt:
            log.info("NIH table has no %s column(s); those metadata stay unknown (expected columns: %s)",
                     missing_opt, list(NIH_COLUMNS))
        return df.reset_index(drop=True)

    @staticmethod
    def _load_boxes(root: Path, bbox_csv, label_names) -> pd.DataFrame | None:
        if bbox_csv is False:
            return None
        if bbox_csv is None or bbox_csv is True:
            bbox_csv = next((root / n for n in BBOX_NAMES if (root / n).is_file()), None)
            if bbox_csv is None:
                return None
        return read_nih_boxes(bbox_csv, label_names)


__all__ = ["NIHDataset", "find_nih_table", "read_nih_boxes", "NIH_FRAME"]
