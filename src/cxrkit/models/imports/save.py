"""An :class:`~cxrkit.models.imports.base.Imported` -> a bundle directory (config.json + model.safetensors)."""
from __future__ import annotations

from pathlib import Path

import torch

from cxrkit.models.imports.base import Imported, ImportWeightsError


def build_model(imported: Imported, seed: int = 0):
    """The CXRModel the import describes, with its weights; a head the source lacks is initialised from ``seed``."""
    from cxrkit.models import create_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = create_model(imported.arch, len(imported.label_names), stem=imported.stem)
    result = model.load_state_dict(imported.state_dict, strict=False)
    missing = [k for k in result.missing_keys if not (k.startswith("head.") and not imported.head_trained)]
    if missing or result.unexpected_keys:
        raise ImportWeightsError(f"the {imported.kind} weights do not fit a cxrkit {imported.arch}: missing "
                                 f"{missing[:3]}, unexpected {result.unexpected_keys[:3]}")
    return model.eval()


def save_imported(imported: Imported, out: str | Path, *, seed: int = 0) -> Path:
    """Write the import as a bundle: weights, labels, the source's input normalisation, range, polarity and
    resolution, its calibration (e.g. torchxrayvision's operating points) and where it came from."""
    from cxrkit.bundle import save_bundle
    from cxrkit.bundle.format import read_bundle_config, write_bundle_config

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ImportWeightsError(f"{out} is not empty; choose a new --out folder")
    model = build_model(imported, seed)
    inp = imported.input
    provenance = {"imported": {"kind": imported.kind, **imported.source, "head_trained": imported.head_trained},
                  "synthetic": False}
    threshold_policy = "imported-0.5" if imported.head_trained else "untrained-head"
    path = save_bundle(out, model, label_names=imported.label_names, input_size=int(inp["size"]),
                       preresize=int(inp["size"]), mean=float(inp["mean"]), std=float(inp["std"]),
                       provenance=provenance, extra={"threshold_policy": threshold_policy})
    config = read_bundle_config(path)
    config["input"].update({k: inp[k] for k in ("range", "polarity") if k in inp})
    config["calibration"] = imported.calibration
    write_bundle_config(path, config)
    return path
