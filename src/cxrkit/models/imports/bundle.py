"""A cxrkit bundle as the starting point of a new task (``--pretrained bundle:DIR`` or just ``DIR``)."""
from __future__ import annotations

from pathlib import Path

from cxrkit.models.imports.base import Imported, ImportWeightsError


def read(path: str | Path, *, label_names=None) -> Imported:
    from cxrkit.bundle.format import read_bundle_config, read_bundle_weights

    path = Path(path)
    if not path.is_dir():
        raise ImportWeightsError(f"{path} is not a bundle directory")
    config = read_bundle_config(path)
    if config.get("ensemble") or not config.get("model"):
        raise ImportWeightsError(f"{path} is an ensemble bundle; start from one of its members instead")
    spec, inp = config["model"], config["input"]
    sd = read_bundle_weights(path)
    names = list(config["label_names"])
    if label_names is not None and list(label_names) != names:
        sd = {k: v for k, v in sd.items() if k.startswith("backbone.")}  # a new task: only the backbone carries over
        names = list(label_names)
    keep = {"mean", "std", "size", "polarity", "range"}
    return Imported(kind="bundle", arch=spec["arch"], state_dict=sd, label_names=names,
                    input={k: v for k, v in inp.items() if k in keep}, stem=spec.get("stem"),
                    head_trained=label_names is None or list(label_names) == list(config["label_names"]),
                    calibration=config.get("calibration"), source={"file": str(path), "format": "cxrkit-bundle"})
