"""A split view of a prepared cache: the same films (images.npy linked, not copied) under a different train / val /
test assignment, e.g. one fold of a patient-level cross-validation or a labelled subset of a learning curve. Rows
given any other split name (say ``"unused"``) are in none of the three."""
from __future__ import annotations

import hashlib
import io
import os
import shutil
from pathlib import Path

import numpy as np

from cxrkit.data.cache_read import BOXES, IMAGES, INDEX, MANIFEST, Cache, atomic_write_bytes, atomic_write_json, \
    open_cache


def write_split_view(cache: Cache, out: str | Path, splits) -> Cache:
    """Write a cache folder at ``out`` whose row i is ``cache``'s row i with split ``splits[i]``; returns it opened.
    Its content hash derives from the parent's and the new split column, so a run trained on one view refuses to
    resume on another."""
    out = Path(out)
    splits = np.asarray(splits).astype(str)
    if len(splits) != len(cache.index):
        raise ValueError(f"{len(splits)} split names for a cache of {len(cache.index)} rows")
    out.mkdir(parents=True, exist_ok=True)
    index = cache.index.copy()
    index["split"] = splits
    buf = io.BytesIO()
    index.to_parquet(buf, index=False)
    atomic_write_bytes(out / INDEX, buf.getvalue())
    shutil.copyfile(cache.path / BOXES, out / BOXES)
    link = out / IMAGES
    if not link.exists():
        try:
            os.symlink((cache.path / IMAGES).resolve(), link)
        except OSError:  # no symlinks on this filesystem: a copy is slower but the same
            shutil.copyfile(cache.path / IMAGES, link)
    parent = str(cache.manifest.get("content_hash"))
    digest = hashlib.sha256(parent.encode() + splits.astype("U").tobytes()).hexdigest()
    names, counts = np.unique(splits, return_counts=True)
    manifest = {**cache.manifest, "content_hash": f"view:{digest}",
                "view_of": {"path": str(cache.path.resolve()), "content_hash": parent},
                "split": {"policy": "view", "counts": {str(k): int(v) for k, v in zip(names, counts)}}}
    atomic_write_json(out / MANIFEST, manifest)
    return open_cache(out)
