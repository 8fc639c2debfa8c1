"""Who a loaded model is: a content hash of its bundle and a human-readable version (the REST service, the DICOM
node's SR and the worklist all report these two)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path


def model_id(predictor) -> str:
    """A short content hash of the bundle (every config.json and safetensors file in it, ensemble members and the
    quality gate included, plus the ONNX file when that backend runs): changes whenever the model does."""
    h = hashlib.sha256()
    path = getattr(predictor, "path", None)
    files = []
    if path is not None and Path(path).is_dir():
        files = sorted(Path(path).rglob("config.json")) + sorted(Path(path).rglob("*.safetensors"))
    onnx = getattr(predictor, "onnx_path", None)
    if onnx is not None:
        files.append(Path(onnx))
    files = [f for f in files if f.is_file()]
    if not files:  # an in-memory predictor: hash what defines it
        h.update(json.dumps(predictor.config, sort_keys=True, default=str).encode())
    for f in files:
        h.update(str(f.relative_to(path) if path is not None and f.is_relative_to(path) else f.name).encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return "sha256:" + h.hexdigest()[:16]


def model_version(config: dict) -> str:
    """A human-readable model version: the bundle's own ``version`` if set, else its creation time."""
    prov = config.get("provenance") or {}
    return str(config.get("version") or prov.get("created") or "unversioned")
