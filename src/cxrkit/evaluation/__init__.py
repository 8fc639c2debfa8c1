"""Evaluation: metrics with patient-clustered CIs, operating points, calibration, subgroups, published and
adjudicated comparisons, ensembles, triage simulation and the HTML report. Entry point: :func:`evaluate`."""
from __future__ import annotations


def evaluate(*args, **kwargs) -> dict:
    """See :func:`cxrkit.evaluation.evaluate.evaluate` (imported lazily: it pulls in torch)."""
    from cxrkit.evaluation.evaluate import evaluate as _evaluate

    return _evaluate(*args, **kwargs)


__all__ = ["evaluate"]
