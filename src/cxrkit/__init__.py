"""cxrkit: multi-label chest X-ray classifiers you can train, evaluate, explain and serve.

For research use only: not a medical device, not for clinical decisions.
"""
from __future__ import annotations

__version__ = "0.1.0"

RESEARCH_NOTICE = (
    "Research use only. cxrkit outputs are not a medical device and must not be used "
    "for diagnosis or clinical decisions."
)


def load_bundle(path, device: str = "cpu", **kwargs):
    """Load a model bundle directory and return a ready :class:`cxrkit.bundle.Predictor`."""
    from cxrkit.bundle import load_bundle as _load

    return _load(path, device=device, **kwargs)


__all__ = ["__version__", "RESEARCH_NOTICE", "load_bundle"]
