"""Label vocabularies and the harmonisation between NIH ChestX-ray14 and CheXpert."""
from __future__ import annotations

import numpy as np

# Conventional NIH ChestX-ray14 order (Wang et al. 2017; CheXNet).
NIH_FINDINGS: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)

# CheXpert's 14 observations, in the column order of train.csv.
CHEXPERT_OBSERVATIONS: tuple[str, ...] = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)

# CheXpert observation -> NIH finding, only where the two mean the same radiological finding.
# NIH findings with no CheXpert counterpart (Infiltration, Mass, Nodule, Emphysema, Fibrosis,
# Pleural_Thickening, Hernia) stay unknown (NaN) for CheXpert images, so a merged dataset's loss masks them.
CHEXPERT_TO_NIH: dict[str, str] = {
    "Atelectasis": "Atelectasis",
    "Cardiomegaly": "Cardiomegaly",
    "Pleural Effusion": "Effusion",
    "Pneumonia": "Pneumonia",
    "Pneumothorax": "Pneumothorax",
    "Consolidation": "Consolidation",
    "Edema": "Edema",
}
NIH_TO_CHEXPERT: dict[str, str] = {v: k for k, v in CHEXPERT_TO_NIH.items()}


def harmonise(labels: np.ndarray, source_names, target_names, mapping: dict[str, str] | None = None) -> np.ndarray:
    """Re-express an (N, len(source_names)) label matrix in ``target_names``.

    A target column takes the source column of the same name, or the one ``mapping`` sends to it; a target with
    no source stays NaN (unknown), never 0.
    """
    labels = np.asarray(labels, dtype=np.float32)
    src_index = {n: i for i, n in enumerate(source_names)}
    for s, t in (mapping or {}).items():
        if s in src_index:
            src_index.setdefault(t, src_index[s])
    out = np.full((labels.shape[0], len(target_names)), np.nan, dtype=np.float32)
    for j, name in enumerate(target_names):
        i = src_index.get(name)
        if i is not None:
            out[:, j] = labels[:, i]
    return out
