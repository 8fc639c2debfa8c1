"""Build an NIH-layout folder of N images by hard-linking (or copying) real NIH PNGs, for throughput benchmarks.

    python tools/nih_bench_set.py ../shared/data/nih-fullres ../shared/data/nih-sample/Data_Entry_2017.csv OUT --n 600

Rows reuse the labels of the source images; names are made unique (patient id = copy number) so the patient split
and the leakage check run as on real data. Only for timing: the images repeat.
"""
from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

import pandas as pd


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("images", type=Path)
    ap.add_argument("table", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--n", type=int, default=600)
    a = ap.parse_args()
    files = sorted(a.images.glob("*.png"))
    table = pd.read_csv(a.table).set_index("Image Index")
    (a.out / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(a.n):
        src = files[i % len(files)]
        name = f"{i + 1:08d}_000.png"
        dst = a.out / "images" / name
        if not dst.exists():
            try:
                os.link(src, dst)
            except OSError:
                shutil.copy(src, dst)
        row = table.loc[src.name].copy()
        row["Patient ID"] = i + 1
        rows.append(row.rename(name))
    out = pd.DataFrame(rows)
    out.index.name = "Image Index"
    out.reset_index().to_csv(a.out / "Data_Entry_2017.csv", index=False)
    print(f"{a.n} images in {a.out}")


if __name__ == "__main__":
    main()
