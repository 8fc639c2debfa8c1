"""The phantom set's files in NIH ChestX-ray14's own layout, written byte-for-byte reproducibly.

``images/<patient>_<nnn>.png``, ``masks/`` (same names, lung fields 0/255), ``Data_Entry_2017.csv`` with NIH's
exact columns, ``BBox_List_2017.csv`` in NIH's box format, ``phantom.json`` (the marker readers use: settings,
``box_frame``) and a ``README.md`` saying the films are synthetic. No timestamps anywhere.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np

from cxrkit import RESEARCH_NOTICE
from cxrkit.data.labels import NIH_FINDINGS
from cxrkit.data.phantom.findings import BBOX_LABEL
from cxrkit.data.phantom.population import FilmSpec

IMAGES, MASKS = "images", "masks"
TABLE, BBOX, MARKER, README = "Data_Entry_2017.csv", "BBox_List_2017.csv", "phantom.json", "README.md"
TABLE_HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
                "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]")
BBOX_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,"  # exactly NIH's header (it has 3 empty names)
# Fixed PNG settings: same bytes on every run; run-length deflate at level 1 is ~2x faster than the default
# strategy on noisy films and compresses them as well.
IMAGE_PNG = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE]
# Masks are 0/255: a 1-bit PNG encodes 5x faster than 8-bit RLE and decodes back to 0/255.
MASK_PNG = [cv2.IMWRITE_PNG_BILEVEL, 1, cv2.IMWRITE_PNG_COMPRESSION, 1]


def write_png(path: Path, array: np.ndarray, params) -> None:
    """Encode and write. Not atomic on purpose (a rename per file costs ~0.5 ms): a chunk only counts as done
    once the journal says so, and an interrupted chunk is redrawn whole, overwriting any torn file."""
    ok, buf = cv2.imencode(".png", array, params)
    if not ok:
        raise OSError(f"PNG encoding failed for {path}")
    with open(path, "wb") as f:
        f.write(buf)


def write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(text, encoding="utf-8", newline="\n")
    os.replace(tmp, path)


def _num(v: float) -> str:
    return repr(round(float(v), 6))


def table_text(specs: list[FilmSpec], size: int) -> str:
    """``Data_Entry_2017.csv``: one NIH row per film; the 'original' image is the film itself."""
    lines = [TABLE_HEADER]
    for s in specs:
        spacing = _num(s.fov_mm / size)
        lines.append(f"{s.image_id},{s.label_string},{s.follow_up},{s.patient_id},{s.age},{s.sex},{s.view},"
                     f"{size},{size},{spacing},{spacing}")
    return "\n".join(lines) + "\n"


def bbox_text(specs: list[FilmSpec], boxes: dict[int, dict]) -> str:
    """``BBox_List_2017.csv``: one row per (film, positive finding), NIH spelling ('Infiltrate')."""
    lines = [BBOX_HEADER]
    for s in specs:
        film_boxes = boxes.get(s.index, {})
        for name in NIH_FINDINGS:
            if name in film_boxes:
                x, y, w, h = film_boxes[name]
                lines.append(f"{s.image_id},{BBOX_LABEL[name]},{_num(x)},{_num(y)},{_num(w)},{_num(h)}")
    return "\n".join(lines) + "\n"


def marker_text(info: dict) -> str:
    return json.dumps(info, indent=2, sort_keys=True) + "\n"


def readme_text(info: dict, counts: dict[str, int], n_patients: int, n_boxes: int) -> str:
    d = info["difficulty"]
    rows = "\n".join(f"| {name} | {counts.get(name, 0)} |" for name in NIH_FINDINGS)
    return f"""# cxrkit phantom chest radiographs (SYNTHETIC)

Every image in this folder was drawn by a program (`cxrkit.data.phantom`, generator version
{info['generator_version']}). **No image shows a real person.** Anatomy and findings are simplified procedural
drawings meant for demos, tests and CI of chest X-ray pipelines; a model trained here learns nothing about real
patients. {RESEARCH_NOTICE}

Settings: {info['n']} images of {info['size']} x {info['size']} px, seed {info['seed']}, enrich {info['enrich']},
difficulty contrast {d['contrast']}, noise {d['noise']}, exposure {d['exposure']}, rotation {d['rotation']} deg.
Regenerating with the same settings gives byte-identical files.

Patients ({n_patients}), follow-ups, age, sex, view and label co-occurrence follow statistics of the real NIH
ChestX-ray14 table (Wang et al., CVPR 2017), shipped with cxrkit as aggregate counts only.

## Layout (the NIH ChestX-ray14 layout)

- `images/<patient>_<follow-up>.png` - 8-bit grey films
- `masks/<same name>.png` - lung fields (0 / 255), the pleural spaces above the diaphragm minus heart and
  mediastinum
- `Data_Entry_2017.csv` - NIH's columns; `OriginalImage[Width,Height]` is the film size and
  `OriginalImagePixelSpacing[x,y]` the spacing (mm) at that size
- `BBox_List_2017.csv` - {n_boxes} boxes, one per positive finding per image, in NIH's format and spelling
  (`Infiltrate` for Infiltration), `x, y, w, h` in pixels of the image itself (not NIH's 1024 frame)
- `phantom.json` - settings and `box_frame` ({info['box_frame']}), read by cxrkit's NIH reader

## Positive images per finding

| finding | images |
|---|---|
{rows}
"""
