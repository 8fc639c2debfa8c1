"""torchxrayvision (Cohen et al. 2022) DenseNet-121 and ResNet-50 weight files -> cxrkit bundles.

What the files are (read from torchxrayvision's source): ``xrv.models.DenseNet(weights=...)`` ``torch.load``s a
whole pickled ``DenseNet`` and copies its ``state_dict()``; ``xrv.models.ResNet(weights=...)`` loads a plain
state dict of torchvision's ResNet-50 with a one-channel ``conv1`` and 18 outputs. The DenseNet pickle is read
with torch's weights-only unpickler and stand-in classes, so nothing in the file runs.

Input: one channel, pixels scaled to [-1024, 1024] (``xrv.datasets.normalize(img, 255)`` = ``(2 * p / 255 - 1) *
1024``, i.e. mean 0.5 / std 1/2048 on [0, 1] pixels), 224 px (DenseNet) or 512 px (ResNet). Outputs: the 18
targets of the weights' published label list, of which cxrkit keeps those in its NIH vocabulary (absent ones,
e.g. 'Lung Opacity', are dropped, never guessed); targets a weights file was not trained on ('' in xrv's list) are
dropped too. Where xrv publishes operating points (``op_threshs``), the bundle applies xrv's ``op_norm`` on top of
the sigmoid as its calibration, so it gives the probabilities xrv's own model gives.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from cxrkit.models.imports.base import (
    Imported,
    ImportWeightsError,
    check_file,
    input_spec,
    load_module_pickle,
    module_tensors,
    read_tensors,
    strip_wrappers,
)

log = logging.getLogger(__name__)

XRV_DEFAULT_TARGETS = ("Atelectasis", "Consolidation", "Infiltration", "Pneumothorax", "Edema", "Emphysema",
                       "Fibrosis", "Effusion", "Pneumonia", "Pleural_Thickening", "Cardiomegaly", "Nodule", "Mass",
                       "Hernia", "Lung Lesion", "Fracture", "Lung Opacity", "Enlarged Cardiomediastinum")
XRV_MEAN, XRV_STD = 0.5, 1.0 / 2048.0


def _metadata(kind: str, path: Path, weights_name: str | None) -> tuple[str | None, dict]:
    """xrv's published entry for these weights: named, or found by the file name its release URL gives."""
    try:
        import torchxrayvision as xrv
    except ImportError:
        raise ImportWeightsError("importing torchxrayvision weights reads that package's published label lists and "
                                 "operating points: pip install 'cxrkit[imports]' (or torchxrayvision)") from None
    urls = xrv.models.model_urls
    family = "densenet" if kind == "xrv-densenet121" else "resnet50"
    if weights_name is not None:
        if weights_name not in urls:
            choices = sorted(k for k in urls if k.startswith(family) or (family == "densenet" and "-" not in k))
            raise ImportWeightsError(f"unknown torchxrayvision weights {weights_name!r}; choose one of {choices}")
        return weights_name, urls[weights_name]
    by_file = {os.path.basename(v["weights_url"]): k for k, v in urls.items() if k.startswith(family)}
    name = by_file.get(path.name)
    return (name, urls[name]) if name else (None, {})


def read(kind: str, path: str | Path, *, weights_name: str | None = None, label_names=None) -> Imported:
    from cxrkit.data.labels import NIH_FINDINGS

    path = check_file(path)
    name, meta = _metadata(kind, path, weights_name)
    if kind == "xrv-densenet121":
        module = load_module_pickle(path, {"torchxrayvision.models": ["DenseNet", "_DenseBlock", "_DenseLayer",
                                                                        "_Transition"]})
        sd = module_tensors(module)
        backbone = {f"backbone.{k}": v for k, v in sd.items() if k.startswith("features.")}
        head_w, head_b, arch, size = sd.get("classifier.weight"), sd.get("classifier.bias"), "densenet121", 224
    else:
        sd = strip_wrappers(read_tensors(path), "model.")
        backbone = {f"backbone.model.{k}": v for k, v in sd.items() if not k.startswith("fc.")}
        head_w, head_b, arch, size = sd.get("fc.weight"), sd.get("fc.bias"), "resnet50", 512
    if head_w is None or head_b is None or not backbone:
        raise ImportWeightsError(f"{path} does not look like a torchxrayvision {kind[4:]} weights file (no "
                                 "classifier / no backbone tensors)")
    targets = list(meta.get("labels") or XRV_DEFAULT_TARGETS)
    if len(targets) != head_w.shape[0]:
        raise ImportWeightsError(f"{path} has {head_w.shape[0]} outputs but the weights' label list has "
                                 f"{len(targets)}")
    size = int(meta.get("input_resolution", size))
    wanted = list(label_names or NIH_FINDINGS)
    keep = [(n, targets.index(n)) for n in wanted if n in targets]
    if not keep:
        raise ImportWeightsError(f"none of {wanted} is among the weights' outputs {targets}")
    idx = torch.tensor([i for _, i in keep])
    state = {**backbone, "head.fc.weight": head_w[idx].clone(), "head.fc.bias": head_b[idx].clone()}
    calibration = None
    op = meta.get("op_threshs")
    if op is not None:
        calibration = {"method": "op_norm", "thresholds": [float(op[i]) for _, i in keep],
                       "source": "torchxrayvision op_threshs"}
    if name is None:
        log.warning("%s is not named like a torchxrayvision release file and no weights name was given: outputs "
                    "are read in xrv's default target order, without its operating-point normalisation", path)
    dropped = [t for t in targets if t and t not in wanted]
    return Imported(kind=kind, arch=arch, state_dict=state, label_names=[n for n, _ in keep],
                    input={**input_spec(XRV_MEAN, XRV_STD, size), "range": [-1024.0, 1024.0]},
                    calibration=calibration,
                    source={"file": path.name, "format": "torchxrayvision", "weights": name,
                            "outputs": targets, "dropped_outputs": dropped})
