"""Evaluation against Google's radiologist-adjudicated NIH labels (Majkowska et al., Radiology 2019).

The table grades four findings YES/NO for 4,376 NIH images. The 14 NIH outputs are mapped onto them as follows
(a score per adjudicated finding = the maximum of the mapped outputs' probabilities):

* Pneumothorax     <- Pneumothorax
* Nodule or mass   <- max(Nodule, Mass)
* Airspace opacity <- max(Consolidation, Pneumonia, Infiltration, Edema, Atelectasis)  (findings that appear as
  airspace opacity on a radiograph; the adjudication protocol grouped them the same way)
* Fracture         <- not covered: no NIH output describes fractures; reported, never scored.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from cxrkit.data.errors import CxrError
from cxrkit.evaluation.bootstrap import ClusterBootstrap
from cxrkit.evaluation.summary import ranking_summary

ADJUDICATED_MAPPING: dict[str, tuple[str, ...]] = {
    "Pneumothorax": ("Pneumothorax",),
    "Nodule or mass": ("Nodule", "Mass"),
    "Airspace opacity": ("Consolidation", "Pneumonia", "Infiltration", "Edema", "Atelectasis"),
    "Fracture": (),
}
REQUIRED_COLUMNS = ("Image Index", "Patient ID", *ADJUDICATED_MAPPING)


class AdjudicatedError(CxrError):
    """The adjudicated-label table is missing or not in the Google 2019 format."""


def load_adjudicated(path: str | Path) -> pd.DataFrame:
    """Read the Google 2019 table (csv or csv.gz); adds float columns 1 = YES, 0 = NO, NaN = missing."""
    path = Path(path)
    if not path.is_file():
        raise AdjudicatedError(f"adjudicated label table {path} not found (expected Google's "
                               "google2019_nih-chest-xray-labels.csv.gz)")
    try:
        table = pd.read_csv(path, dtype={"Image Index": str, "Patient ID": str})
    except (pd.errors.ParserError, UnicodeDecodeError, OSError) as exc:
        raise AdjudicatedError(f"{path} is not a readable CSV: {exc}") from exc
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise AdjudicatedError(f"{path} lacks columns {missing}; expected the Google 2019 adjudicated NIH labels "
                               f"with {list(REQUIRED_COLUMNS)}")
    for c in ADJUDICATED_MAPPING:
        table[c] = table[c].astype(str).str.strip().str.upper().map({"YES": 1.0, "NO": 0.0})
    return table


def adjudicated_metrics(image_ids: Sequence[str], patient_ids: Sequence[str], probs: np.ndarray,
                        label_names: Sequence[str], table: pd.DataFrame, *, n_boot: int = 1000,
                        seed: int = 0) -> dict:
    """AUROC/AUPRC (patient-clustered CIs) of the mapped scores against adjudicated labels, for the images of
    ``image_ids`` present in ``table``."""
    pos = {name: i for i, name in enumerate(label_names)}
    lookup = table.drop_duplicates("Image Index").set_index("Image Index")
    ids = pd.Index([str(i) for i in image_ids])
    present = np.flatnonzero(ids.isin(lookup.index))
    out = {"n_matched_images": int(present.size), "mapping": {k: list(v) for k, v in ADJUDICATED_MAPPING.items()},
           "source": "Majkowska et al., Radiology 2019 (Google Health adjudicated NIH ChestX-ray14 labels)"}
    if present.size == 0:
        out["reason"] = "no image of this split is in the adjudicated table"
        return out
    rows = lookup.loc[ids[present]]
    if "Set Id" in rows:
        out["set_ids"] = {str(k): int(v) for k, v in rows["Set Id"].value_counts().items()}
    covered = [k for k, src in ADJUDICATED_MAPPING.items() if src and all(s in pos for s in src)]
    out["not_covered"] = {k: ("no NIH output describes it" if not src else f"bundle lacks outputs {src}")
                          for k, src in ADJUDICATED_MAPPING.items() if k not in covered}
    if not covered:
        return out
    Y = rows[covered].to_numpy(np.float64)
    S = np.stack([probs[present][:, [pos[s] for s in ADJUDICATED_MAPPING[k]]].max(axis=1) for k in covered], axis=1)
    boot = ClusterBootstrap.draw(np.asarray(patient_ids)[present], n_boot, seed)
    summary, _ = ranking_summary(Y, S, covered, boot)
    out["per_class"] = summary["per_class"]
    return out
