"""Checkpoints of the two public CheXNet reproductions (DenseNet-121, 14 ChestX-ray14 findings, RGB input with
ImageNet normalisation, sigmoid outputs).

* arnoweng/CheXNet ``model.pth.tar``: ``{"state_dict": ...}`` of ``nn.DataParallel(DenseNet121(14))``: keys
  ``module.densenet121.features...`` in torchvision < 0.3's dotted names (``norm.1``), classifier
  ``densenet121.classifier.0`` (a Linear followed by a Sigmoid). Read as tensors only.
* jrzech/reproduce-chexnet ``checkpoint``: ``torch.save({"model": model, ...})`` - the whole model pickled. Reading
  it runs whatever the pickle says, so it is only done with ``trust_pickle=True`` (``--trust-pickle``).

The first convolution keeps its three channels behind an ImageNet ChannelStem, so grey films give exactly the
probabilities of the original code on the same (R = G = B) input; the original test-time ten-crop is not part
of the bundle.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from cxrkit.models.imports.base import (
    CHEXNET_LABELS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    Imported,
    ImportWeightsError,
    check_file,
    input_spec,
    read_tensors,
    rename_old_densenet,
    strip_wrappers,
)


def _from_densenet_keys(sd: dict[str, torch.Tensor], path: Path, kind: str, label_names) -> Imported:
    from cxrkit.data.labels import NIH_FINDINGS

    sd = {rename_old_densenet(k): v for k, v in strip_wrappers(sd, "densenet121.").items()}
    backbone = {f"backbone.{k}": v for k, v in sd.items() if k.startswith("features.")}
    w = sd.get("classifier.0.weight", sd.get("classifier.weight"))
    b = sd.get("classifier.0.bias", sd.get("classifier.bias"))
    if not backbone or w is None or b is None or w.shape[0] != len(CHEXNET_LABELS):
        raise ImportWeightsError(f"{path} is not a CheXNet DenseNet-121 checkpoint with {len(CHEXNET_LABELS)} "
                                 f"outputs (found {len(backbone)} feature tensors, classifier "
                                 f"{None if w is None else tuple(w.shape)})")
    wanted = [n for n in (label_names or NIH_FINDINGS) if n in CHEXNET_LABELS]
    idx = torch.tensor([CHEXNET_LABELS.index(n) for n in wanted])
    state = {**backbone, "head.fc.weight": w[idx].clone(), "head.fc.bias": b[idx].clone()}
    return Imported(kind=kind, arch="densenet121", state_dict=state, label_names=wanted,
                    input={**input_spec(0.0, 1.0, 224), "range": [0.0, 1.0],
                           "note": "ImageNet per-channel normalisation happens in the model's stem"},
                    stem={"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
                    source={"file": path.name, "format": kind})


def read_arnoweng(path: str | Path, *, label_names=None) -> Imported:
    path = check_file(path)
    return _from_densenet_keys(read_tensors(path), path, "chexnet-arnoweng", label_names)


def read_jrzech(path: str | Path, *, trust_pickle: bool = False, label_names=None) -> Imported:
    path = check_file(path)
    if not trust_pickle:
        raise ImportWeightsError(
            f"{path} (a jrzech/reproduce-chexnet checkpoint) is a pickled Python object: loading it can run any code "
            "its author put in it. Pass --trust-pickle only for a file from a source you trust; cxrkit then stores "
            "the weights as safetensors and never unpickles it again")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise ImportWeightsError(f"could not unpickle {path}: {type(exc).__name__}: {exc}") from exc
    model = obj.get("model") if isinstance(obj, dict) else obj
    if isinstance(model, nn.Module):
        sd = model.state_dict()
    elif isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        sd = obj["state_dict"]
    else:
        raise ImportWeightsError(f"{path} holds a {type(obj).__name__} without a 'model' module")
    return _from_densenet_keys({k: v for k, v in sd.items() if torch.is_tensor(v)}, path, "chexnet-jrzech",
                               label_names)
