"""An NIH-layout folder of at least ``n`` films built from the real reference films.

With the full reference data (421 films) the real ``nih-sample`` folder is used as is. With only the committed
subset (20 films) the real films are kept and topped up with photometric variants of them (gamma, contrast, sensor
noise; geometry untouched, so their NIH boxes still hold), each under a new patient id: enough images for split-,
gate- and report-level tests, still made of real chest-film pixels. Tests that need *distinct* real films use the
real ones only.
"""
from __future__ import annotations

import csv
import gzip
import shutil
from pathlib import Path

import cv2
import numpy as np

VARIANT_BASE = 90_000_000  # patient ids of variants: far above NIH's 30,805


def real_films(shared_data: Path) -> list[Path]:
    return sorted((shared_data / "nih-sample" / "images").glob("*.png"))


def variant(image: np.ndarray, rng: np.random.Generator, geometric: bool = False) -> np.ndarray:
    """A photometric (and with ``geometric``, a small affine + blur) variant of a real film."""
    if geometric:
        h, w = image.shape
        m = cv2.getRotationMatrix2D((w / 2, h / 2), rng.uniform(-6, 6), rng.uniform(0.88, 1.12))
        m[:, 2] += rng.uniform(-0.05, 0.05, 2) * (w, h)
        image = cv2.warpAffine(image, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        k = rng.choice([0, 3, 5])
        if k:
            image = cv2.GaussianBlur(image, (int(k), int(k)), 0)
    x = image.astype(np.float32) / 255.0
    x = x ** rng.uniform(0.8, 1.25)
    x = (x - 0.5) * rng.uniform(0.9, 1.1) + 0.5 + rng.uniform(-0.04, 0.04)
    x = x + rng.normal(0.0, 0.01, x.shape)
    return np.clip(np.rint(x * 255), 0, 255).astype(np.uint8)


def _read_rows(path: Path) -> list[list[str]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", newline="") as f:
        return list(csv.reader(f))


def nih_like(shared_data: Path, out: Path, n: int, *, seed: int = 0, tables: tuple[Path, ...] = ()) -> Path:
    """``shared_data/nih-sample`` when it has ``n`` films, else ``out``: an NIH folder of ``n`` films.

    Each of ``tables`` (CSVs keyed by ``Image Index``: NIH boxes, adjudicated labels) is written to ``out`` under its
    name without ``.gz``, a variant getting its source film's rows.
    """
    src = shared_data / "nih-sample"
    films = real_films(shared_data)
    if len(films) >= n:
        return src
    from cxrkit.data.decode import read_image

    (out / "images").mkdir(parents=True, exist_ok=True)
    rows = _read_rows(src / "Data_Entry_2017.csv")
    header, by_id = rows[0], {r[0]: r for r in rows[1:]}
    extra = {t.name.removesuffix(".gz"): _read_rows(t) for t in tables}
    written = {name: [t[0]] for name, t in extra.items()}
    written["Data_Entry_2017.csv"] = [header]

    def add(name: str, film: str, pid: str) -> None:
        if name != film:
            row = list(by_id[film])
            row[0], row[2], row[3] = name, "0", pid
        else:
            row = by_id[film]
        written["Data_Entry_2017.csv"].append(row)
        for key, t in extra.items():
            written[key] += [[name, *r[1:]] for r in t[1:] if r[0] == film]

    for p in films:
        shutil.copyfile(p, out / "images" / p.name)
        add(p.name, p.name, by_id[p.name][3])
    rng = np.random.default_rng(seed)
    for k in range(n - len(films)):
        p = films[k % len(films)]
        pid = VARIANT_BASE + k
        name = f"{pid:08d}_000.png"
        cv2.imwrite(str(out / "images" / name), variant(read_image(p), rng))
        add(name, p.name, str(pid))
    for key, t in written.items():
        with open(out / key, "w", newline="") as f:
            csv.writer(f).writerows(t)
    return out
