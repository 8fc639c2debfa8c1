"""What every weight import returns, and the reading helpers the sources share (no pickle runs code here)."""
from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from cxrkit.data.errors import CxrError

# ImageNet's per-channel statistics (torchvision / timm / the CheXNet reproductions normalise RGB input with them)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# the 14 ChestX-ray14 findings in the order CheXNet and its reproductions output them (= cxrkit's NIH order)
CHEXNET_LABELS = ("Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
                  "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia")


class ImportWeightsError(CxrError):
    """A weights file cannot be imported as the kind asked for."""


@dataclass
class Imported:
    """A public weights file re-expressed as a cxrkit model.

    ``state_dict`` uses :class:`cxrkit.models.CXRModel` keys (``backbone.*``, ``head.fc.*``); ``head_trained`` is
    False when the source has no head for cxrkit's findings (ImageNet checkpoints): the head is then freshly
    initialised and the bundle is for fine-tuning, not for reading films. ``input`` is the normalisation the
    network was trained with (``mean``/``std`` on [0, 1] pixels, ``range`` of the resulting model input,
    ``polarity``, ``size``); ``stem`` feeds grey input to a 3-channel network exactly (per-channel statistics).
    """

    kind: str
    arch: str
    state_dict: dict[str, torch.Tensor]
    label_names: list[str]
    input: dict
    stem: dict | None = None
    head_trained: bool = True
    calibration: dict | None = None
    source: dict = field(default_factory=dict)

    def backbone_state(self) -> dict[str, torch.Tensor]:
        return {k.removeprefix("backbone."): v for k, v in self.state_dict.items() if k.startswith("backbone.")}


def input_spec(mean: float, std: float, size: int, *, polarity: str = "MONOCHROME2") -> dict:
    """The bundle's ``input`` entries for a normalisation ``(pixel / 255 - mean) / std``."""
    return {"mean": float(mean), "std": float(std), "size": int(size), "polarity": polarity,
            "range": [float((0.0 - mean) / std), float((1.0 - mean) / std)]}


def check_file(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise ImportWeightsError(f"weights file {path} does not exist")
    return path


def rename_old_densenet(key: str) -> str:
    """torchvision < 0.3 DenseNet checkpoints name layers 'norm.1', 'relu.1', 'conv.2'; today's are 'norm1' ..."""
    return re.sub(r"\.(norm|relu|conv)\.(\d)", r".\1\2", key)


def strip_wrappers(sd: dict, *prefixes: str) -> dict:
    """Drop DataParallel's 'module.', torch.compile's '_orig_mod.' and the given model-wrapper prefixes."""
    pattern = re.compile(r"^(?:" + "|".join(re.escape(p) for p in ("module.", "_orig_mod.", *prefixes)) + r")+")
    return {pattern.sub("", k): v for k, v in sd.items()}


def module_tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    """Parameters and persistent buffers of an unpickled module tree, read from its ``__dict__`` so that modules
    pickled by old torch versions (which lack attributes ``state_dict()`` expects today) still work."""
    out: dict[str, torch.Tensor] = {}

    def walk(mod, prefix: str) -> None:
        d = vars(mod)
        skip = d.get("_non_persistent_buffers_set", set())
        for name, t in {**d.get("_parameters", {}), **d.get("_buffers", {})}.items():
            if t is not None and name not in skip:
                out[prefix + name] = t.detach()
        for name, child in d.get("_modules", {}).items():
            if child is not None:
                walk(child, f"{prefix}{name}.")

    walk(module, "")
    return out


def load_module_pickle(path: Path, class_names: dict[str, list[str]]) -> nn.Module:
    """Load a whole-model ``torch.save(model)`` file without running code from it: torch's weights-only unpickler
    with torch.nn's layer classes allowed, and each class named in ``class_names`` ({module: [names]}) replaced by
    an empty :class:`torch.nn.Module` subclass that only holds the restored parameters."""
    stand_ins = [(type(n, (nn.Module,), {"__module__": m}), f"{m}.{n}") for m, names in class_names.items()
                 for n in names]
    allowed = [nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Linear,
               nn.Sequential, nn.Sigmoid, nn.Dropout, set, OrderedDict, *stand_ins]
    try:
        with torch.serialization.safe_globals(allowed):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ImportWeightsError(f"could not read {path} as a whole-model weights file of this kind ({exc})".split(
            "\n")[0]) from exc
    if isinstance(obj, dict) and "model" in obj:
        obj = obj["model"]
    if not isinstance(obj, nn.Module):
        raise ImportWeightsError(f"{path} holds a {type(obj).__name__}, not a pickled model")
    return obj


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """A plain state dict (``.pt``/``.pth``/``.pth.tar``/``.safetensors``), unwrapping {'state_dict': ...}."""
    from cxrkit.models.pretrained import PretrainedError, read_state_dict

    try:
        return read_state_dict(path)
    except PretrainedError as exc:
        raise ImportWeightsError(str(exc)) from exc
