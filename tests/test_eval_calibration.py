"""Operating points on validation, ECE, temperature / isotonic calibration (stored in the bundle format)."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_curve

from cxrkit.bundle.calibration import apply_calibration
from cxrkit.evaluation.calibration import CalibrationError, fit_calibration, reliability
from cxrkit.evaluation.operating import choose_threshold


def _logits(seed, n=4000, true_scale=3.0):
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 2, size=(n, 2))
    y = (rng.random((n, 2)) < 1 / (1 + np.exp(-z))).astype(float)
    return z * true_scale, y  # over-confident logits: the right temperature is true_scale


def test_temperature_recovers_scale_and_lowers_ece():
    z, y = _logits(0)
    cal = fit_calibration("temperature", z, y)
    assert cal["temperature"] == pytest.approx([3.0, 3.0], rel=0.12)
    before = reliability(y[:, 0], apply_calibration(z, None)[:, 0])["ece"]
    after = reliability(y[:, 0], apply_calibration(z, cal)[:, 0])["ece"]
    assert after < before / 2


def test_isotonic_is_monotone_and_lowers_ece():
    z, y = _logits(1)
    cal = fit_calibration("isotonic", z, y)
    assert np.all(np.diff(cal["y"][0]) >= 0)
    p = apply_calibration(z, cal)
    assert reliability(y[:, 1], p[:, 1])["ece"] < reliability(y[:, 1], apply_calibration(z, None)[:, 1])["ece"]
    with pytest.raises(CalibrationError, match="unknown calibration method"):
        fit_calibration("platt", z, y)


def test_ece_of_calibrated_probabilities_is_small():
    rng = np.random.default_rng(2)
    p = rng.random(20000)
    y = (rng.random(20000) < p).astype(float)
    assert reliability(y, p)["ece"] < 0.02
    assert reliability(y, np.clip(p + 0.2, 0, 1))["ece"] > 0.1


def test_operating_points():
    rng = np.random.default_rng(3)
    y = (rng.random(2000) < 0.2).astype(float)
    s = y + rng.normal(0, 0.8, 2000)
    t = choose_threshold(y, s, "youden")
    fpr, tpr, thr = roc_curve(y, s)
    assert t == pytest.approx(thr[np.argmax(tpr - fpr)])
    for policy, spec in (("sens_at_spec90", 0.90), ("sens_at_spec95", 0.95)):
        t = choose_threshold(y, s, policy)
        got_spec = ((s < t) & (y == 0)).sum() / (y == 0).sum()
        assert spec <= got_spec < spec + 0.01
    t = choose_threshold(y, s, "f1")
    f1 = lambda th: 2 * ((s >= th) & (y == 1)).sum() / ((s >= th).sum() + (y == 1).sum())  # noqa: E731
    assert f1(t) >= max(f1(x) for x in np.quantile(s, np.linspace(0.01, 0.99, 99))) - 1e-9
    assert choose_threshold(np.zeros(10), s[:10], "youden") is None
