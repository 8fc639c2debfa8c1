"""The coded concepts the result writers put into DICOM SR (and name in the SC's legend).

Standard codes (SNOMED CT "SCT", DICOM "DCM", UCUM) are used only where the code could be checked against the
DICOM code tables pydicom ships (``pydicom.sr.codedict`` / ``pydicom.sr._concepts_dict``, generated from PS3.16);
every such code below names the DICOM context group (CID) or dictionary entry it was taken from. Everything else
is in cxrkit's private coding scheme :data:`PRIVATE_SCHEME` ("99CXRKIT"; DICOM reserves designators starting
with "99" for private schemes), whose code value is the label name itself, so a reader can always map a code back
to the model's output column. docs/dicom.md lists every code.
"""
from __future__ import annotations

import re

from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

# Looked up by keyword in pydicom's PS3.16 tables, so a code that is not there fails at import, not in a reader.
_sct = codes.SCT
_dcm = codes.DCM

PRIVATE_SCHEME = "99CXRKIT"
PRIVATE_SCHEME_NAME = "cxrkit private codes"
PRIVATE_SCHEME_ORGANISATION = "cxrkit project"

_MEANING_MAX = 64  # CodeMeaning is LO


def private(value: str, meaning: str | None = None) -> Code:
    """A concept in cxrkit's private scheme. ``value`` is kept as given (a label name) apart from characters DICOM
    strings cannot carry; values over 16 characters are written as LongCodeValue by highdicom."""
    clean = _clean(value) or "UNNAMED"
    return Code(clean, PRIVATE_SCHEME, (_clean(meaning) if meaning else clean.replace("_", " "))[:_MEANING_MAX])


def _clean(text: str) -> str:
    # Backslash is the DICOM value separator and control characters are not allowed in SH/LO/UC.
    return re.sub(r"[\\\x00-\x1f\x7f]", " ", str(text)).strip()


# The findings. SCT/DCM where PS3.16 (as shipped in pydicom) has the same radiological concept; the CID in the
# comment is the context group pydicom lists it under.
FINDING_CODES: dict[str, Code] = {
    # NIH ChestX-ray14
    "Atelectasis": private("Atelectasis"),  # only "Plate-like atelectasis" (SCT 40779009) is in PS3.16: narrower
    # PS3.16 (pydicom) gives SCT 287272002 two meanings: "Cardiomegaly" (CID 12248/12249) and "Enlarged septal
    # foramen of heart (disorder)"; unverifiable here, so private until someone checks a SNOMED CT release
    "Cardiomegaly": private("Cardiomegaly"),
    "Effusion": _sct.PleuralEffusion,  # CID 645 / 8134; NIH "Effusion" is pleural effusion
    "Infiltration": _dcm.Infiltrate,  # CID 6102 / 6104 (chest CAD findings)
    "Mass": _sct.Mass,  # CID 6102 / 6104
    "Nodule": _sct.Nodule,  # CID 6102 / 6104
    "Pneumonia": private("Pneumonia"),  # not in PS3.16
    "Pneumothorax": _sct.Pneumothorax,  # CID 6102 / 6105
    "Consolidation": private("Consolidation"),  # not in PS3.16
    "Edema": _sct.PulmonaryEdema,  # CID 3700; NIH "Edema" is pulmonary edema
    "Emphysema": private("Emphysema"),  # only "Mediastinal emphysema" (SCT 16838000) is there: a different finding
    "Fibrosis": _sct.Fibrosis,  # CID 6335-6338 (morphologic "Fibrosis")
    "Pleural_Thickening": private("Pleural_Thickening", "Pleural thickening"),  # not in PS3.16
    "Hernia": private("Hernia"),  # not in PS3.16
    # CheXpert-only names
    "Pleural Effusion": _sct.PleuralEffusion,  # CID 645 / 8134
    "Lung Opacity": _dcm.Opacity,  # CID 6102 / 6104
    "Lung Lesion": private("Lung Lesion"),  # SCT "Lesion" (52988006) has no lung site; kept private
    "Fracture": private("Fracture"),  # PS3.16 has only limb/stent fractures
    "Support Devices": private("Support Devices"),  # no umbrella device concept in PS3.16
    "Enlarged Cardiomediastinum": private("Enlarged Cardiomediastinum"),
    "Pleural Other": private("Pleural Other"),
    "No Finding": private("No Finding"),
}


def finding_code(name: str) -> Code:
    """The coded concept of a finding label; a name the table does not know goes to the private scheme (a bundle
    may carry any label set), so this never fails."""
    code = FINDING_CODES.get(name)
    return code if code is not None else private(name)


def is_private(code: Code) -> bool:
    return code.scheme_designator == PRIVATE_SCHEME


# Measurements, evaluations and their values.
PROBABILITY = _dcm.Probability  # DCM dictionary entry (no CID)
UNIT_ONE = codes.UCUM.NoUnits  # UCUM "1": a probability is a dimensionless number in [0, 1]
PRESENT = _sct.Present  # CID 240 / 241 "Present-Absent"
ABSENT = _sct.Absent  # CID 240 / 241
FINDING = _dcm.Finding  # TID 1501 "Finding" (highdicom writes it for finding_type)
DECISION_THRESHOLD = private("THRESHOLD", "Decision threshold")
ABNORMALITY_SCORE = private("ABNORMALITY", "Abnormality score")
QUALITY_GATE = private("QUALITY_GATE", "Quality gate verdict")
QUALITY_PASSED = _dcm.Succeeded  # CID 6042 "Result Status"
QUALITY_FAILED = _dcm.Failed  # CID 6042
QUALITY_REASON = private("QUALITY_REASON", "Quality gate reason")
URGENT_FINDING = private("URGENT_FINDING", "Urgent finding")
PRIORITY = _sct.Priority  # SCT dictionary entry (no CID)
PRIORITY_REASON = private("PRIORITY_REASON", "Priority reason")
RESEARCH_NOTICE = private("RESEARCH_NOTICE", "Research use notice")
SYNTHETIC_NOTICE = private("SYNTHETIC_DATA", "Model trained on synthetic data")
FILM_NOT_READ = private("FILM_NOT_READ", "Film not read")
HEATMAP_METHOD = private("HEATMAP_METHOD", "Heatmap method")

# Algorithm identification (TID 4019) and the report's context.
ALGORITHM_FAMILY = _dcm.ArtificialIntelligence  # CID 7162
PROCEDURE_REPORTED = _sct.PlainRadiography  # CID 10005
MODEL_ID = "model_id"  # the TID 4019 "Algorithm Parameters" text is "model_id=<bundle content hash>"

# Study priority tiers (cxrkit.deploy.dicom.worklist.PRIORITY_RULES) as coded values of PRIORITY. Private: the
# tiers are the node's own rules, not a standard urgency scale.
PRIORITY_CODES: dict[int, Code] = {
    0: private("PRIORITY_0", "Priority 0: urgent"),
    1: private("PRIORITY_1", "Priority 1: check (quality gate failed)"),
    2: private("PRIORITY_2", "Priority 2: abnormal"),
    3: private("PRIORITY_3", "Priority 3: routine"),
}


def priority_code(tier: int) -> Code:
    """The coded priority tier; an out-of-range tier is clamped into 0..3 (the worklist's own default is 3)."""
    return PRIORITY_CODES[min(3, max(0, int(tier)))]
