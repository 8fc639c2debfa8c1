"""Crash-safe file writes shared by every stage (cache, checkpoints, bundles): a reader - or a writer killed
mid-way - sees the old file or the new one, never a torn one."""
from __future__ import annotations

import json
import os
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes, *, sync_dir: bool = True) -> None:
    """Write ``data`` to ``path`` so a reader (or a killed writer) sees the old file or the new one, never half.

    ``sync_dir=False`` skips making the rename itself durable: for files whose loss after a power cut only
    costs redoing work (chunk markers).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    if sync_dir:
        fsync_dir(path.parent)


def atomic_write_json(path: Path, obj, *, sync_dir: bool = True) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode(), sync_dir=sync_dir)
