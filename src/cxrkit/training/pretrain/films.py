"""The unlabelled films a pretraining run reads: a cache's memory map as it is, or films decoded once from
folders (and several caches) into OUT/films.npy, which a resumed run reuses."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cxrkit.data.errors import CxrError

FILMS = "films.npy"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".dcm", ".dicom"}


class Films:
    """Duck-types the part of a Cache that :class:`cxrkit.data.loader.CacheLoader` reads (no labels)."""

    def __init__(self, images: np.ndarray, origin: str):
        self.images, self.origin = images, origin
        self.index = pd.DataFrame(index=np.arange(len(images)))
        self.size = int(images.shape[1])

    def labels(self, rows=None) -> np.ndarray:
        n = len(self.images) if rows is None else len(rows)
        return np.zeros((n, 0), np.float32)


def _is_cache(path: Path) -> bool:
    return (path / "manifest.json").is_file()


def _folder_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def open_films(sources: list[str], out: Path, size: int, progress: bool = True) -> Films:
    """One cache alone is read in place; anything else (folders, several caches) is decoded at ``size`` px into
    ``out/films.npy`` once."""
    from cxrkit.data.cache import open_cache

    paths = [Path(s) for s in sources]
    for p in paths:
        if not p.exists():
            raise CxrError(f"pretraining source {p} does not exist; pass a cache folder or a folder of films")
    if len(paths) == 1 and _is_cache(paths[0]):
        cache = open_cache(paths[0])
        return Films(cache.images, f"cache {paths[0]}")
    target = out / FILMS
    if target.is_file():
        return Films(np.load(target, mmap_mode="r"), f"{target} (decoded earlier)")
    films = _decode_all(paths, size, progress)
    out.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(FILMS + ".tmp.npy")
    np.save(tmp, films)
    tmp.replace(target)
    return Films(np.load(target, mmap_mode="r"), f"{len(paths)} sources decoded into {target}")


def _decode_all(paths: list[Path], size: int, progress: bool) -> np.ndarray:
    import cv2
    from tqdm.auto import tqdm

    from cxrkit.data.cache import open_cache
    from cxrkit.data.decode import read_image
    from cxrkit.data.errors import ImageError
    from cxrkit.data.transforms import fit_square

    parts, bad = [], 0
    for p in paths:
        if _is_cache(p):
            imgs = open_cache(p).images
            parts.append(np.stack([im if im.shape[0] == size else cv2.resize(np.asarray(im), (size, size),
                                                                              interpolation=cv2.INTER_AREA)
                                   for im in imgs]))
            continue
        files = _folder_files(p)
        out = []
        for f in tqdm(files, desc=f"decode {p.name}", unit="film", disable=not progress):
            try:
                out.append(fit_square(read_image(f), size)[0])
            except (ImageError, ValueError):
                bad += 1
        if out:
            parts.append(np.stack(out))
    if not parts:
        raise CxrError(f"no readable film in {', '.join(map(str, paths))} ({bad} unreadable); pass a cache folder or "
                       "a folder of PNG / JPEG / DICOM films")
    return np.ascontiguousarray(np.concatenate(parts).astype(np.uint8))
