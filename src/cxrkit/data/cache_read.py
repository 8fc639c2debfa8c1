"""Reading a prepared cache (see docs/data.md): the on-disk layout and :class:`Cache`."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from cxrkit.data.errors import CacheError
from cxrkit.fileio import atomic_write_bytes, atomic_write_json, fsync_dir  # noqa: F401 (re-exported)

CACHE_FORMAT = "cxrkit-cache"
CACHE_FORMAT_VERSION = 1
MANIFEST = "manifest.json"
IMAGES = "images.npy"
INDEX = "index.parquet"
BOXES = "boxes.parquet"
BAD_FILES = "bad_files.csv"
PROGRESS = ".progress"
# Everything prepare writes; --overwrite removes exactly these (never unrelated files in the folder).
CACHE_FILES = (MANIFEST, IMAGES, INDEX, BOXES, BAD_FILES, PROGRESS, "summary.json", "summary.png")
SPLITS = ("train", "val", "test")


def read_manifest(folder: Path) -> dict | None:
    """The manifest in ``folder``, None when there is none; CacheError when it is not a cxrkit cache manifest."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CacheError(f"{path} is not readable JSON ({exc}); delete the folder or run cxr prepare with "
                         "--overwrite") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != CACHE_FORMAT:
        raise CacheError(f"{path} is not a cxrkit cache manifest (format={manifest.get('format')!r} if a dict); "
                         "pick another folder for the cache")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > CACHE_FORMAT_VERSION:
        raise CacheError(f"{folder} is a cache of format version {version}, newer than this cxrkit reads "
                         f"({CACHE_FORMAT_VERSION}); upgrade cxrkit or prepare the cache again")
    return manifest


def sha256_files(paths, progress: bool = False) -> str:
    """sha256 over the bytes of ``paths`` in order (the cache's content hash: images.npy then index.parquet)."""
    from tqdm.auto import tqdm

    h = hashlib.sha256()
    total = sum(Path(p).stat().st_size for p in paths)
    with tqdm(total=total, unit="B", unit_scale=True, desc="hash", disable=not progress, leave=False) as bar:
        for p in paths:
            with open(p, "rb") as f:
                while block := f.read(16 << 20):
                    h.update(block)
                    bar.update(len(block))
    return "sha256:" + h.hexdigest()


class Cache:
    """A prepared cache: ``images[i]`` (S x S uint8, memory-mapped) is the image of ``index`` row ``i``.

    Attributes: ``path``, ``index`` (DataFrame, good images only), ``images`` (np.memmap, N x S x S uint8),
    ``boxes`` (DataFrame: row, image_id, label, x, y, w, h in cache pixels), ``manifest`` (dict),
    ``label_names`` (tuple), ``size`` (int).
    """

    def __init__(self, path: Path, manifest: dict, index: pd.DataFrame, images: np.ndarray, boxes: pd.DataFrame):
        self.path = Path(path)
        self.manifest = manifest
        self.index = index
        self.images = images
        self.boxes = boxes
        self.label_names: tuple[str, ...] = tuple(manifest["label_names"])
        self.size = int(manifest["size"])
        self._labels: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.index)

    def __repr__(self) -> str:
        counts = self.index["split"].value_counts().to_dict()
        return (f"Cache({str(self.path)!r}, images={len(self)}, size={self.size}, labels={len(self.label_names)}, "
                f"splits={ {k: counts.get(k, 0) for k in SPLITS} })")

    def rows(self, split: str) -> np.ndarray:
        """int64 row numbers (into ``index`` and ``images``) of ``split`` ("train", "val", "test", or "all": every
        row, e.g. a whole external set)."""
        if split == "all":
            return np.arange(len(self.index), dtype=np.int64)
        if split not in SPLITS:
            raise CacheError(f"unknown split {split!r}; a cache has splits {SPLITS} (or 'all' for every row)")
        return np.flatnonzero(self.index["split"].to_numpy() == split).astype(np.int64)

    def labels(self, rows=None) -> np.ndarray:
        """(N, C) float32 label matrix (NaN = unknown), of all rows or of ``rows``."""
        if self._labels is None:
            self._labels = np.ascontiguousarray(self.index[list(self.label_names)].to_numpy(dtype=np.float32))
        return self._labels if rows is None else self._labels[np.asarray(rows, dtype=np.int64)]

    def verify(self, progress: bool = False) -> None:
        """Recompute the content hash over images.npy and index.parquet; CacheError when it differs."""
        actual = sha256_files([self.path / IMAGES, self.path / INDEX], progress=progress)
        if actual != self.manifest.get("content_hash"):
            raise CacheError(f"cache {self.path} is corrupt: content hash {actual} differs from the manifest's "
                             f"{self.manifest.get('content_hash')}; prepare it again with --overwrite")


def open_cache(path: os.PathLike | str) -> Cache:
    """Open a cache written by :func:`cxrkit.data.prepare` (``cxr prepare``); CacheError if missing or incomplete."""
    path = Path(path)
    if not path.is_dir():
        raise CacheError(f"cache folder not found: {path}; create it with `cxr prepare SOURCE {path}`")
    manifest = read_manifest(path)
    if manifest is None:
        if any(path.glob("*.csv")) or any(path.glob("*.csv.gz")) or (path / "images").is_dir():
            # a dataset folder (NIH layout, phantom set, CSV): prepare it into its own cache, not into itself
            raise CacheError(f"{path} is a dataset folder, not a prepared cache; prepare it first, e.g. "
                             f"`cxr prepare {path} cache/{path.resolve().name} --size 128`, then pass "
                             f"cache/{path.resolve().name}")
        raise CacheError(f"{path} holds no cache manifest ({MANIFEST}); create a cache with "
                         f"`cxr prepare DATASET {path}` (DATASET: the folder of images and labels)")
    if not manifest.get("complete"):
        raise CacheError(f"cache {path} is incomplete (its preparation was interrupted); run cxr prepare again with "
                         "the same source and size to resume")
    try:
        index = pd.read_parquet(path / INDEX)
        boxes = pd.read_parquet(path / BOXES)
        images = np.load(path / IMAGES, mmap_mode="r")
    except (OSError, ValueError) as exc:
        raise CacheError(f"cache {path} is damaged ({exc}); prepare it again with --overwrite") from exc
    size = int(manifest["size"])
    if images.shape != (len(index), size, size) or images.dtype != np.uint8:
        raise CacheError(f"cache {path} is damaged: images.npy is {images.shape} {images.dtype} but the index has "
                         f"{len(index)} rows of {size} px; prepare it again with --overwrite")
    return Cache(path, manifest, index, images, boxes)
