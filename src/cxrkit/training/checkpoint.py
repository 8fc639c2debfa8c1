"""Atomic training checkpoints: plain tensors and dicts only, written temp-file + fsync + rename, read with
``weights_only=True`` so a checkpoint can never run code when loaded."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from cxrkit.data.errors import CxrError
from cxrkit.fileio import atomic_write_bytes

LAST = "last.pt"
# Written by the engine, read back by finalize when the bundle is made (here so neither imports the other).
BEST_WEIGHTS = "best.safetensors"
VAL_PREDICTIONS = "val_predictions.npz"


class CheckpointError(CxrError):
    """A checkpoint is missing, unreadable, or from a different run."""


def atomic_write(path: Path, data: bytes) -> None:
    """Write bytes so that ``path`` holds either the old or the new content, never a torn file (even on SIGKILL
    or power loss); creates the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, data)


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """torch.save ``state`` (tensors, numbers, strings, lists, dicts) atomically."""
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write(Path(path), buf.getvalue())


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` onto the CPU, refusing anything but plain data."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}; nothing to resume (drop --resume to start the run)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure to parse is the same user-facing problem
        raise CheckpointError(f"could not read checkpoint {path}: {exc}; delete it to restart that run") from exc


def plain(obj: Any) -> Any:
    """Convert numpy scalars/arrays and tuples inside a nested structure to plain Python so weights_only loads it."""
    import numpy as np

    if isinstance(obj, dict):
        return {str(k) if not isinstance(k, int) else k: plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return obj
