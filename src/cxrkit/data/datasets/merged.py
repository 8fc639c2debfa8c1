"""Several datasets as one: harmonised labels, collision-free ids, each image read through its own source."""
from __future__ import annotations

import numpy as np
import pandas as pd

from cxrkit.data.datasets.base import BOX_COLUMNS, TABLE_COLUMNS, CXRDataset
from cxrkit.data.errors import DatasetError
from cxrkit.data.labels import CHEXPERT_TO_NIH, NIH_FINDINGS, NIH_TO_CHEXPERT, harmonise
from cxrkit.data.record import Sample

BOTH_WAYS = {**CHEXPERT_TO_NIH, **NIH_TO_CHEXPERT}


def _prefixes(datasets) -> list[str]:
    # "nih", "chexpert", and "nih-2" if NIH is merged twice
    seen: dict[str, int] = {}
    out = []
    for ds in datasets:
        n = seen[ds.source] = seen.get(ds.source, 0) + 1
        out.append(ds.source if n == 1 else f"{ds.source}-{n}")
    return out


class MergedDataset(CXRDataset):
    """Concatenation of datasets in one label vocabulary.

    Labels are harmonised with :func:`cxrkit.data.labels.harmonise` (CheXpert <-> NIH shared findings; a finding a
    source does not label is NaN there, so the loss masks it). ``image_id`` and ``patient_id`` become
    ``"<source>:<id>"`` so two sources cannot collide; the table's ``source`` column says where each row came from,
    and ``ds[i]`` reads the image through the dataset that owns it.
    """

    source = "merged"

    def __init__(self, datasets, *, label_names=NIH_FINDINGS):
        datasets = list(datasets)
        if not datasets or not all(isinstance(d, CXRDataset) for d in datasets):
            raise DatasetError("MergedDataset needs a non-empty list of datasets (CXRDataset instances)")
        label_names = tuple(label_names)
        tables, boxes, owners = [], [], []
        for k, (ds, prefix) in enumerate(zip(datasets, _prefixes(datasets))):
            t = ds.table[list(TABLE_COLUMNS)].copy()
            t["image_id"] = prefix + ":" + t["image_id"].astype(str)
            t["patient_id"] = prefix + ":" + t["patient_id"].astype(str)
            labels = harmonise(ds.labels, ds.label_names, label_names, BOTH_WAYS)
            t = pd.concat([t, pd.DataFrame(labels, columns=list(label_names), index=t.index)], axis=1)
            t["source"] = ds.table["source"].to_numpy() if "source" in ds.table else ds.source
            tables.append(t)
            owners.append(np.stack([np.full(len(ds), k), np.arange(len(ds))], axis=1))
            if len(ds.boxes):
                b = ds.boxes[list(BOX_COLUMNS)].copy()
                b["image_id"] = prefix + ":" + b["image_id"].astype(str)
                b["label"] = b["label"].map(lambda n: n if n in label_names else BOTH_WAYS.get(n, n))
                boxes.append(b[b["label"].isin(label_names)])
        self.datasets = datasets
        self._owner = np.concatenate(owners).astype(np.int64)
        table = pd.concat(tables, ignore_index=True)
        merged_boxes = pd.concat(boxes, ignore_index=True) if boxes else None
        super().__init__(table, label_names, merged_boxes, root=None)

    def read(self, i: int) -> np.ndarray:
        k, j = self._owner[i]
        return self.datasets[k].read(int(j))

    def __getitem__(self, i: int) -> Sample:
        sample = super().__getitem__(i)
        sample["meta"]["source"] = str(self.table.at[i, "source"])
        return sample
