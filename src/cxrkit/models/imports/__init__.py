"""Public weights into cxrkit: ``import_weights(kind, path) -> Imported`` (state dict in cxrkit keys, label
mapping, input normalisation), :func:`cxrkit.models.imports.save.save_imported` (a bundle), and
``KIND:FILE`` for ``cxr train --pretrained`` (docs/imports.md).

One module per source: :mod:`.tvtimm` (torchvision / timm ImageNet), :mod:`.xrv` (torchxrayvision),
:mod:`.chexnet` (arnoweng and jrzech CheXNet reproductions), :mod:`.bundle` (a cxrkit bundle).
"""
from __future__ import annotations

from pathlib import Path

from cxrkit.models.imports.base import Imported, ImportWeightsError

KINDS = {
    "torchvision": "torchvision ImageNet state dict (.pth / .safetensors); --arch, default densenet121",
    "timm": "timm ImageNet state dict (.pth / .bin / .safetensors); --arch names the model",
    "xrv-densenet121": "torchxrayvision DenseNet-121 weights file (a pickled model, read without running code)",
    "xrv-resnet50": "torchxrayvision ResNet-50 weights file (a state dict)",
    "chexnet-arnoweng": "arnoweng/CheXNet model.pth.tar (DataParallel, old dotted DenseNet keys)",
    "chexnet-jrzech": "jrzech/reproduce-chexnet checkpoint (a pickled model: needs --trust-pickle)",
    "bundle": "a cxrkit bundle directory (initialisation for a new task)",
    "cxrkit-backbone": "a backbone file written by `cxr pretrain` (.safetensors; no head)",
}
# kinds whose files fix the architecture (torchvision / timm files do not name theirs)
_KIND_ARCH = {"xrv-densenet121": "densenet121", "xrv-resnet50": "resnet50", "chexnet-arnoweng": "densenet121",
              "chexnet-jrzech": "densenet121"}


def import_weights(kind: str, path: str | Path, *, trust_pickle: bool = False, arch: str | None = None,
                   weights_name: str | None = None, label_names=None) -> Imported:
    """Read ``path`` as a ``kind`` weights file (see :data:`KINDS`). ``label_names``: the findings wanted
    (default cxrkit's 14 NIH findings; a source's outputs outside them are dropped). Raises ImportWeightsError."""
    if kind not in KINDS:
        raise ImportWeightsError(f"unknown import kind {kind!r}; choose one of {', '.join(KINDS)}")
    if arch is not None and kind not in ("torchvision", "timm"):
        raise ImportWeightsError(f"--arch is only for torchvision / timm checkpoints; a {kind} file fixes its own")
    if weights_name is not None and not kind.startswith("xrv-"):
        raise ImportWeightsError("--xrv-weights is only for torchxrayvision files")
    if kind in ("torchvision", "timm"):
        from cxrkit.models.imports import tvtimm

        return tvtimm.read(kind, path, arch=arch, label_names=label_names)
    if kind.startswith("xrv-"):
        from cxrkit.models.imports import xrv

        return xrv.read(kind, path, weights_name=weights_name, label_names=label_names)
    if kind == "chexnet-arnoweng":
        from cxrkit.models.imports import chexnet

        return chexnet.read_arnoweng(path, label_names=label_names)
    if kind == "chexnet-jrzech":
        from cxrkit.models.imports import chexnet

        return chexnet.read_jrzech(path, trust_pickle=trust_pickle, label_names=label_names)
    if kind == "cxrkit-backbone":
        from cxrkit.models.imports import backbone_file

        return backbone_file.read(path, label_names=label_names)
    from cxrkit.models.imports import bundle

    return bundle.read(path, label_names=label_names)


def split_kind(pretrained: str | Path) -> tuple[str | None, str]:
    """``"xrv-densenet121:FILE"`` -> (kind, FILE); anything else -> (None, as given)."""
    text = str(pretrained)
    kind, sep, rest = text.partition(":")
    return (kind, rest) if sep and kind in KINDS else (None, text)


def backbone_source(pretrained: str | Path, arch: str | None = None) -> Imported | None:
    """What ``--pretrained`` initialises a backbone from when it names an import: ``KIND:FILE`` or a bundle
    directory. None for a plain torchvision/timm file (cxrkit's one-channel summed-stem path) and for 'hub'.
    ``arch``: the run's architecture, which a torchvision/timm checkpoint does not name itself."""
    kind, path = _detect(pretrained)
    if kind is None:
        return None
    if kind == "chexnet-jrzech":
        raise ImportWeightsError("a jrzech checkpoint is a pickle: convert it once with `cxr import chexnet-jrzech "
                                 "FILE --out BUNDLE --trust-pickle`, then pass --pretrained BUNDLE")
    return import_weights(kind, path, arch=arch if kind in ("torchvision", "timm") else None)


def _detect(pretrained: str | Path) -> tuple[str | None, str]:
    """(kind, path) of a --pretrained value: an explicit KIND:FILE, a bundle folder, a cxrkit backbone file."""
    kind, path = split_kind(pretrained)
    if kind is None and Path(path).is_dir():
        kind = "bundle"
    if kind is None:
        from cxrkit.models.imports.backbone_file import read_metadata

        if read_metadata(path) is not None:
            kind = "cxrkit-backbone"
    return kind, path


def source_bundle_config(pretrained: str | Path) -> dict | None:
    """The config of the cxrkit bundle a --pretrained value names; None for anything else, and for a bundle that
    cannot be read (that is reported when it is loaded)."""
    kind, path = _detect(pretrained)
    if kind != "bundle":
        return None
    from cxrkit.bundle.format import read_bundle_config

    try:
        return read_bundle_config(path)
    except Exception:  # noqa: BLE001 - reported when the weights are loaded
        return None


def source_arch(pretrained: str | Path) -> str | None:
    """The architecture a --pretrained value fixes (None: it does not say, e.g. a torchvision file or 'hub')."""
    kind, path = _detect(pretrained)
    if kind in _KIND_ARCH:
        return _KIND_ARCH[kind]
    if kind == "bundle":
        return ((source_bundle_config(pretrained) or {}).get("model") or {}).get("arch")
    if kind == "cxrkit-backbone":
        from cxrkit.models.imports.backbone_file import read_metadata

        return read_metadata(path)["arch"]
    return None


__all__ = ["source_arch", "source_bundle_config", "KINDS", "ImportWeightsError", "Imported", "backbone_source", "import_weights", "split_kind"]
