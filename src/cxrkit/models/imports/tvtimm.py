"""ImageNet checkpoints of torchvision and timm (state dict .pth/.pt/.bin or .safetensors) -> a cxrkit backbone.

The network keeps its 3-channel first convolution behind a :class:`~cxrkit.models.registry.ChannelStem` with
ImageNet's per-channel statistics, so a grey film reaches it exactly as torchvision's/timm's own code would feed it
(R = G = B). No head for chest findings exists in such a file: the bundle's head is freshly initialised
(``head_trained = False``), for fine-tuning with ``cxr train --pretrained torchvision:FILE`` or ``BUNDLE``.
"""
from __future__ import annotations

from pathlib import Path

from cxrkit.models.imports.base import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Imported,
    ImportWeightsError,
    check_file,
    input_spec,
    read_tensors,
)


def read(kind: str, path: str | Path, *, arch: str | None = None, label_names=None) -> Imported:
    from cxrkit.data.labels import NIH_FINDINGS
    from cxrkit.models.backbones import build_backbone
    from cxrkit.models.pretrained import PretrainedError, load_into_backbone

    path = check_file(path)
    arch = arch or ("densenet121" if kind == "torchvision" else None)
    if arch is None:
        raise ImportWeightsError("a timm checkpoint does not name its architecture: pass --arch (e.g. resnet50, "
                                 "efficientnet_b0 or timm:<timm model name>)")
    try:
        backbone, _ = build_backbone(arch, 3)
    except KeyError:
        raise ImportWeightsError(f"unknown architecture {arch!r} for a {kind} checkpoint") from None
    try:
        left = load_into_backbone(backbone, arch, read_tensors(path), 3)
    except PretrainedError as exc:
        raise ImportWeightsError(str(exc)) from exc
    missing = [k for k in left if not k.endswith("num_batches_tracked")]
    if missing:
        raise ImportWeightsError(f"{path} lacks {len(missing)} tensors of a {arch} backbone (e.g. {missing[:3]}); "
                                 "is it a checkpoint of that architecture?")
    state = {f"backbone.{k}": v for k, v in backbone.state_dict().items()}
    stem = {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}
    return Imported(kind=kind, arch=arch, state_dict=state, label_names=list(label_names or NIH_FINDINGS),
                    input={**input_spec(0.0, 1.0, 224), "range": [0.0, 1.0], "note": "ImageNet per-channel "
                           "normalisation happens in the model's stem"}, stem=stem, head_trained=False,
                    source={"file": path.name, "format": kind})
