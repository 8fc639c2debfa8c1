"""The 14 NIH findings as drawable signs, in the order they are applied to a film."""
from __future__ import annotations

from cxrkit.data.labels import NIH_FINDINGS
from cxrkit.data.phantom.signs_parenchymal import (Consolidation, Edema, Fibrosis, Infiltration, Mass, Nodule,
                                                   Pneumonia)
from cxrkit.data.phantom.signs_structural import (Atelectasis, Cardiomegaly, Effusion, Emphysema, Hernia,
                                                  PleuralThickening, Pneumothorax, Sign)

SIGNS: dict[str, type[Sign]] = {cls.name: cls for cls in (
    Atelectasis, Cardiomegaly, Effusion, Infiltration, Mass, Nodule, Pneumonia, Pneumothorax, Consolidation, Edema,
    Emphysema, Fibrosis, PleuralThickening, Hernia)}
assert tuple(SIGNS) == NIH_FINDINGS, "every NIH finding needs exactly one sign, in NIH order"

# Shape changes first (a hyperinflated chest is lower, then a collapse raises one side), then overlays from the
# back of the film forward: pleura, diffuse lung, focal lung, retrocardiac.
DRAW_ORDER: tuple[str, ...] = (
    "Emphysema", "Cardiomegaly", "Atelectasis", "Pneumothorax", "Effusion", "Pleural_Thickening", "Edema",
    "Fibrosis", "Infiltration", "Pneumonia", "Consolidation", "Mass", "Nodule", "Hernia")
assert sorted(DRAW_ORDER) == sorted(NIH_FINDINGS)

# The name NIH's BBox_List_2017.csv uses for a finding (it says "Infiltrate" where Data_Entry says "Infiltration").
BBOX_LABEL = {name: ("Infiltrate" if name == "Infiltration" else name) for name in NIH_FINDINGS}
