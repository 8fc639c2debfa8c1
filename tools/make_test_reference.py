"""Rebuild tests/fixtures/reference/: the small committed subset of the reference data the test suite runs on.

    python tools/make_test_reference.py /path/to/shared/data tests/fixtures/reference

Real files are copied verbatim (NIH films and their label rows, the three DICOM files, the NIH box / Google
adjudication rows of those films); the CheXpert table is *generated* (the Stanford table may not be redistributed),
with CheXpert's exact columns and value coding. See tests/fixtures/reference/PROVENANCE.md.
"""
from __future__ import annotations

import argparse
import gzip
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

# The films the tests name (grey + the two RGBA files, the six with NIH boxes, the seven with Google adjudicated
# labels) plus a few "No Finding", Hernia and Emphysema films, so every finding but a few is represented.
FILMS = (
    "00000075_000.png", "00000100_000.png", "00005224_000.png",
    "00004296_000.png", "00009745_000.png", "00013911_000.png", "00008386_000.png", "00022084_000.png",
    "00001933_000.png",
    "00009683_000.png", "00022787_000.png", "00013122_000.png", "00017999_000.png", "00018145_000.png",
    "00026678_000.png", "00029696_000.png",
    "00000284_000.png", "00000353_000.png", "00001166_000.png", "00019534_000.png",
)
DICOM = ("cr_monochrome2_jpeg_baseline.dcm", "cr_monochrome1_same_pixels.dcm", "not_chest_abdomen_ot.dcm")
CHEXPERT_OBS = ("No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
                "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other",
                "Fracture", "Support Devices")


def synthetic_chexpert(n_patients: int = 400, seed: int = 0) -> pd.DataFrame:
    """A CheXpert-format label table (1 / 0 / -1 uncertain / blank), 1-3 studies per patient, some lateral views."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(1, n_patients + 1):
        sex = "Unknown" if p == 7 else rng.choice(["Male", "Female"])  # the real table has one 'Unknown' too
        for s in range(1, int(rng.integers(1, 4)) + 1):
            age = int(rng.integers(18, 91))
            views = ["frontal"] + (["lateral"] if rng.random() < 0.3 else [])
            for v, view in enumerate(views, start=1):
                row = {"Path": f"CheXpert-v1.0-small/train/patient{p:05d}/study{s}/view{v}_{view}.jpg",
                       "Sex": sex, "Age": age, "Frontal/Lateral": view.capitalize(),
                       "AP/PA": rng.choice(["AP", "PA"]) if view == "frontal" else None}
                for name in CHEXPERT_OBS:
                    row[name] = rng.choice([1.0, 0.0, -1.0, np.nan], p=[0.15, 0.1, 0.1, 0.65])
                rows.append(row)
    return pd.DataFrame(rows)


def copy_rows(src: Path, dst: Path, keep) -> None:
    """The header and the rows ``keep(cells)`` accepts, byte for byte (pandas would rename odd header cells)."""
    opener = gzip.open if src.suffix == ".gz" else open
    with opener(src, "rt", newline="") as f:
        lines = f.readlines()
    kept = [lines[0]] + [line for line in lines[1:] if keep(line.split(","))]
    if dst.suffix == ".gz":  # mtime=0: rebuilding gives the same bytes
        dst.write_bytes(gzip.compress("".join(kept).encode(), mtime=0))
    else:
        dst.write_text("".join(kept), newline="")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source", type=Path, help="the full reference data folder (shared/data)")
    ap.add_argument("out", type=Path, help="tests/fixtures/reference")
    args = ap.parse_args()
    src, out = args.source, args.out
    (out / "nih-sample" / "images").mkdir(parents=True, exist_ok=True)
    (out / "dicom").mkdir(exist_ok=True)
    (out / "nih-metadata").mkdir(exist_ok=True)
    for name in FILMS:
        shutil.copyfile(src / "nih-sample" / "images" / name, out / "nih-sample" / "images" / name)
    for name in DICOM:
        shutil.copyfile(src / "dicom" / name, out / "dicom" / name)
    films = set(FILMS)
    copy_rows(src / "nih-sample" / "Data_Entry_2017.csv", out / "nih-sample" / "Data_Entry_2017.csv",
              lambda cells: cells[0] in films)
    meta = src / "nih-metadata"
    # every image of those patients: the films' follow-ups are not on disk, so a reader must report them missing
    patients = {name.split("_")[0] for name in FILMS}
    copy_rows(meta / "Data_Entry_2017_v2020.csv.gz", out / "nih-metadata" / "Data_Entry_2017_v2020.csv.gz",
              lambda cells: cells[0].split("_")[0] in patients)
    for name in ("BBox_List_2017.csv.gz", "google2019_nih-chest-xray-labels.csv.gz"):
        copy_rows(meta / name, out / "nih-metadata" / name, lambda cells: cells[0] in films)
    table = synthetic_chexpert().to_csv(index=False)
    (out / "chexpert_train.csv.gz").write_bytes(gzip.compress(table.encode(), mtime=0))


if __name__ == "__main__":
    main()
