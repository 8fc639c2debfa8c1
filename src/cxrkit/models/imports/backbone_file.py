"""A cxrkit backbone file (``cxrkit-backbone:FILE``): backbone weights alone, as ``cxr pretrain`` writes them.

One safetensors file whose metadata names the format, the architecture, the input channels and the input
normalisation the backbone was trained with, so ``cxr train --pretrained FILE`` needs no other option. There is no
classifier head in it: the head of the new task is freshly initialised (``head_trained = False``).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from cxrkit.models.imports.base import Imported, ImportWeightsError, check_file, input_spec

FORMAT = "cxrkit-backbone"


def save_backbone(path: str | Path, backbone: nn.Module, *, arch: str, in_chans: int, mean: float, std: float,
                  size: int, method: str, details: dict | None = None) -> Path:
    """Write ``backbone``'s weights with what :func:`read` needs to rebuild it (atomically: a crash leaves the old
    file or the new one)."""
    from safetensors.torch import save

    from cxrkit.fileio import atomic_write_bytes

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {f"backbone.{k}": v.detach().cpu().contiguous() for k, v in backbone.state_dict().items()}
    meta = {"format": FORMAT, "arch": arch, "in_chans": str(int(in_chans)),
            "input": json.dumps(input_spec(mean, std, size)), "method": method,
            "details": json.dumps(details or {})}
    atomic_write_bytes(path, save(state, metadata=meta))
    return path


def read_metadata(path: str | Path) -> dict | None:
    """The file's cxrkit-backbone metadata, None when it is not such a file (another safetensors, a .pth...)."""
    path = Path(path)
    if path.suffix != ".safetensors" or not path.is_file():
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception:  # noqa: BLE001 - not a readable safetensors file: not ours
        return None
    return meta if meta.get("format") == FORMAT else None


def read(path: str | Path, *, label_names=None) -> Imported:
    from safetensors.torch import load_file

    from cxrkit.data.labels import NIH_FINDINGS

    path = check_file(path)
    meta = read_metadata(path)
    if meta is None:
        raise ImportWeightsError(f"{path} is not a cxrkit backbone file (a .safetensors written by `cxr pretrain`)")
    if int(meta.get("in_chans", 1)) != 1:
        raise ImportWeightsError(f"{path} holds a {meta['in_chans']}-channel backbone; cxrkit backbones are grey")
    state: dict[str, torch.Tensor] = load_file(str(path))
    return Imported(kind=FORMAT, arch=meta["arch"], state_dict=state, label_names=list(label_names or NIH_FINDINGS),
                    input=json.loads(meta["input"]), head_trained=False,
                    source={"file": path.name, "format": FORMAT, "method": meta.get("method"),
                            "details": json.loads(meta.get("details") or "{}")})
