"""The dataset base class: one label table, one sample contract (see :mod:`cxrkit.data.record`)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cxrkit.data.record import Sample, make_sample

# Columns every dataset table has (besides one float column per label name).
TABLE_COLUMNS = (
    "image_id",      # str, unique within the dataset
    "patient_id",    # str
    "path",          # str, absolute path of the image file
    "age",           # float years, NaN unknown
    "sex",           # "M" / "F" / None
    "view",          # "PA" / "AP" / "LATERAL" / ... / None
    "spacing_x",     # mm per pixel along columns at (frame_w, frame_h), NaN unknown
    "spacing_y",     # mm per pixel along rows
    "frame_w",       # width of the pixel frame spacing and boxes are expressed in (NaN: the file's own size)
    "frame_h",
    "official_split",  # "train" / "val" / "test" / None when the source ships an official split
)
# Box table columns; coordinates are in the (frame_w, frame_h) frame of the image's table row.
BOX_COLUMNS = ("image_id", "label", "x", "y", "w", "h")


class CXRDataset:
    """A chest X-ray dataset: a label table plus a way to read each image.

    Subclasses build ``self.table`` (a DataFrame with :data:`TABLE_COLUMNS` + one column per label name) and
    optionally ``self.boxes`` (:data:`BOX_COLUMNS`). Everything else - indexing, the sample dict, label
    matrices - lives here so every dataset behaves the same (``ds[i]``, ``ds.labels``, ``ds.label_names``).
    """

    source: str = "unknown"

    def __init__(self, table: pd.DataFrame, label_names, boxes: pd.DataFrame | None = None, *, source: str | None = None,
                 root: Path | str | None = None):
        self.label_names: tuple[str, ...] = tuple(label_names)
        missing = [c for c in (*TABLE_COLUMNS, *self.label_names) if c not in table.columns]
        if missing:
            raise ValueError(f"dataset table lacks columns {missing}")
        self.table = table.reset_index(drop=True)
        self.boxes = boxes if boxes is not None else pd.DataFrame(columns=list(BOX_COLUMNS))
        if source is not None:
            self.source = source
        self.root = Path(root) if root is not None else None
        self._box_groups = {k: g for k, g in self.boxes.groupby("image_id")} if len(self.boxes) else {}

    # -- the label table -------------------------------------------------------------------------
    @property
    def labels(self) -> np.ndarray:
        """(N, C) float32 label matrix, NaN = unknown."""
        return self.table[list(self.label_names)].to_numpy(dtype=np.float32)

    @property
    def pathologies(self) -> tuple[str, ...]:  # torchxrayvision's name for the same thing
        return self.label_names

    def __len__(self) -> int:
        return len(self.table)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(source={self.source!r}, images={len(self)}, "
                f"patients={self.table['patient_id'].nunique()}, labels={len(self.label_names)})")

    # -- samples ---------------------------------------------------------------------------------
    def read(self, i: int) -> np.ndarray:
        """Decode image ``i`` (uint8 grey). Subclasses override for non-file sources."""
        from cxrkit.data.decode import read_image

        return read_image(self.table.at[i, "path"])

    def boxes_for(self, image_id: str, width: int, height: int, frame_w=float("nan"), frame_h=float("nan")) -> list:
        g = self._box_groups.get(image_id)
        if g is None:
            return []
        sx = width / frame_w if frame_w == frame_w and frame_w > 0 else 1.0
        sy = height / frame_h if frame_h == frame_h and frame_h > 0 else 1.0
        return [dict(label=r.label, x=r.x * sx, y=r.y * sy, w=r.w * sx, h=r.h * sy) for r in g.itertuples()]

    def __getitem__(self, i: int) -> Sample:
        if not 0 <= i < len(self):
            raise IndexError(i)
        row = self.table.iloc[i]
        image = self.read(i)
        h, w = image.shape
        fw, fh = float(row["frame_w"]), float(row["frame_h"])
        spacing = None
        if row["spacing_x"] == row["spacing_x"] and row["spacing_y"] == row["spacing_y"]:
            # spacing is stated for the frame; a downsized copy has proportionally larger pixels
            kx = fw / w if fw == fw and fw > 0 else 1.0
            ky = fh / h if fh == fh and fh > 0 else 1.0
            spacing = (float(row["spacing_y"]) * ky, float(row["spacing_x"]) * kx)
        age = float(row["age"]) if row["age"] == row["age"] else None
        return make_sample(
            image,
            row[list(self.label_names)].to_numpy(dtype=np.float32),
            self.label_names,
            row["patient_id"],
            row["image_id"],
            age=age,
            sex=row["sex"] if isinstance(row["sex"], str) else None,
            view=row["view"] if isinstance(row["view"], str) else None,
            pixel_spacing=spacing,
            source=self.source,
            path=str(row["path"]),
            boxes=self.boxes_for(row["image_id"], w, h, fw, fh),
        )
