"""Whether a bundle was trained on synthetic (phantom) films, and the warning every output then carries.

A phantom-trained model produces confident-looking probabilities on real radiographs that mean nothing; the CLI,
the REST service, the web page, the evaluation report and the DICOM node all call :func:`trained_on_synthetic` and
show :data:`SYNTHETIC_WARNING` when it is true.
"""
from __future__ import annotations

from typing import Any

# `source` values of cache rows that are not real radiographs (the phantom generator's datasets).
SYNTHETIC_SOURCES = frozenset({"phantom"})

SYNTHETIC_WARNING = ("SYNTHETIC-DATA MODEL: trained on phantom (computer-generated) films, not real radiographs; "
                     "its findings on real images are meaningless. For testing the software only.")
SYNTHETIC_INIT_NOTE = ("initialised from a model trained on phantom (computer-generated) films, then trained on real "
                       "films: research use only, validate it on your own films")


def sources_are_synthetic(sources) -> bool:
    """True when any of the row ``source`` names is a synthetic one (a partly-phantom training set counts)."""
    return any(str(s) in SYNTHETIC_SOURCES for s in sources)


def trained_on_synthetic(config: dict[str, Any]) -> bool:
    """True when the bundle ``config`` (``config.json`` as a dict) was trained on synthetic data.

    Reads ``provenance.synthetic`` (written by training from the cache's row sources); bundles older than that
    flag fall back to ``provenance.data_source`` (the cache manifest's source, whose ``name`` is ``"phantom"`` for
    a phantom set). An ensemble is synthetic when any member's provenance (``provenance.members``) is.
    """
    prov = config.get("provenance") or {}
    if "synthetic" in prov:
        return bool(prov["synthetic"])
    source = prov.get("data_source")
    name = source.get("name") if isinstance(source, dict) else source
    if name is not None and sources_are_synthetic([name]):
        return True
    members = prov.get("members") or []
    return any(trained_on_synthetic({"provenance": m}) for m in members if isinstance(m, dict))


def initialised_from_synthetic(config: dict[str, Any]) -> bool:
    """True when the bundle started from weights trained on synthetic films (``provenance.init_synthetic``, written
    by training when ``--pretrained`` was such a bundle), whatever it was trained on afterwards."""
    return bool((config.get("provenance") or {}).get("init_synthetic"))


def init_is_synthetic(pretrained: str | None) -> bool:
    """Whether ``--pretrained`` names a cxrkit bundle that was trained, or itself initialised, on synthetic films
    (other weight files carry no such record)."""
    from cxrkit.models.imports import source_bundle_config

    config = source_bundle_config(pretrained) if pretrained else None
    return config is not None and (trained_on_synthetic(config) or initialised_from_synthetic(config))
