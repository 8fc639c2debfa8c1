"""Weighted/bootstrapped metrics agree with scikit-learn; bootstrap is patient-clustered and reproducible."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import average_precision_score, f1_score, precision_score, recall_score, roc_auc_score

from cxrkit.evaluation.bootstrap import ClusterBootstrap, percentile_ci
from cxrkit.evaluation.compare import delong_test, paired_bootstrap
from cxrkit.evaluation.metrics import ranking_metrics, undefined_reason, weighted_confusion
from cxrkit.evaluation.summary import ranking_summary


def _data(seed, n=300, ties=True):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(float)
    s = rng.random(n) + 0.4 * y
    return y, (np.round(s, 1) if ties else s), rng


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_identity_weights_equal_sklearn(seed):
    y, s, _ = _data(seed)
    r = ranking_metrics(y, s, np.ones((1, y.size)))
    assert r["auroc"][0] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert r["auprc"][0] == pytest.approx(average_precision_score(y, s), abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_weighted_equals_sklearn_sample_weight(seed):
    y, s, rng = _data(seed)
    W = rng.integers(0, 4, size=(5, y.size)).astype(np.float32)
    r = ranking_metrics(y, s, W)
    for i in range(5):
        assert r["auroc"][i] == pytest.approx(roc_auc_score(y, s, sample_weight=W[i]), abs=1e-10)
        assert r["auprc"][i] == pytest.approx(average_precision_score(y, s, sample_weight=W[i]), abs=1e-10)


def test_confusion_matches_sklearn():
    y, s, rng = _data(3)
    pred = s >= 0.6
    w = rng.integers(0, 3, y.size).astype(float)
    r = weighted_confusion(y, pred, w[None])
    assert r["sensitivity"][0] == pytest.approx(recall_score(y, pred, sample_weight=w))
    assert r["ppv"][0] == pytest.approx(precision_score(y, pred, sample_weight=w))
    assert r["f1"][0] == pytest.approx(f1_score(y, pred, sample_weight=w))
    assert r["specificity"][0] == pytest.approx(recall_score(1 - y, ~pred, sample_weight=w))
    assert r["npv"][0] == pytest.approx(precision_score(1 - y, ~pred, sample_weight=w))


def test_bootstrap_resamples_patients_not_images():
    pids = np.repeat([f"p{i}" for i in range(50)], 3)  # 3 images per patient
    b = ClusterBootstrap.draw(pids, 20, seed=0)
    W = b.weights()
    assert W.shape == (20, 150)
    assert np.all(W.reshape(20, 50, 3) == W.reshape(20, 50, 3)[:, :, :1])  # a patient's images move together
    assert np.all(b.counts.sum(axis=1) == 50)  # each replicate draws as many patients as there are


def test_bootstrap_reproducible_and_ci_contains_point():
    y, s, rng = _data(4, n=400, ties=False)
    Y, S = y[:, None], s[:, None]
    pids = rng.integers(0, 150, y.size).astype(str)
    a, ra = ranking_summary(Y, S, ["x"], ClusterBootstrap.draw(pids, 300, seed=7))
    b, rb = ranking_summary(Y, S, ["x"], ClusterBootstrap.draw(pids, 300, seed=7))
    c, _ = ranking_summary(Y, S, ["x"], ClusterBootstrap.draw(pids, 300, seed=8))
    assert np.array_equal(ra["auroc"], rb["auroc"]) and a == b
    assert a["per_class"]["x"]["auroc_ci_low"] != c["per_class"]["x"]["auroc_ci_low"]
    e = a["per_class"]["x"]
    assert e["auroc"] == pytest.approx(roc_auc_score(y, s))
    assert e["auroc_ci_low"] < e["auroc"] < e["auroc_ci_high"]
    assert e["auprc_ci_low"] < e["auprc"] < e["auprc_ci_high"]
    assert a["mean_auroc"] == pytest.approx(e["auroc"])


def test_undefined_classes_get_nan_and_reason_not_crash():
    rng = np.random.default_rng(0)
    Y = np.zeros((60, 3))
    Y[:, 1] = rng.random(60) < 0.5
    Y[:, 2] = 1.0
    Y[:5, 1] = np.nan  # unknown labels are ignored
    S = rng.random((60, 3))
    summ, _ = ranking_summary(Y, S, ["none", "ok", "all"], ClusterBootstrap.draw(np.arange(60), 50, 0))
    assert summ["per_class"]["none"]["auroc"] is None and "no positive" in summ["per_class"]["none"]["reason"]
    assert summ["per_class"]["all"]["auroc"] is None and "no negative" in summ["per_class"]["all"]["reason"]
    known = ~np.isnan(Y[:, 1])
    assert summ["per_class"]["ok"]["auroc"] == pytest.approx(roc_auc_score(Y[known, 1], S[known, 1]))
    assert summ["mean_auroc_classes"] == ["ok"]
    assert undefined_reason(np.array([np.nan, np.nan])) == "no labelled images"


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 6)), min_size=2, max_size=60), st.randoms())
def test_properties_permutation_invariance_and_ties(pairs, rnd):
    y = np.array([p[0] for p in pairs], float)
    s = np.array([p[1] for p in pairs], float) / 6  # few distinct values: heavy ties
    r = ranking_metrics(y, s, np.ones((1, y.size)))
    perm = np.array(rnd.sample(range(y.size), y.size))
    rp = ranking_metrics(y[perm], s[perm], np.ones((1, y.size)))
    if y.min() == y.max():
        assert np.isnan(r["auroc"][0])
        assert undefined_reason(y) is not None
    else:
        assert r["auroc"][0] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
        assert rp["auroc"][0] == pytest.approx(r["auroc"][0], abs=1e-12)
    if y.max() == 1:
        assert r["auprc"][0] == pytest.approx(average_precision_score(y, s), abs=1e-12)
        assert rp["auprc"][0] == pytest.approx(r["auprc"][0], abs=1e-12)
    # a constant score is uninformative: AUROC exactly 0.5 whatever the labels
    if 0 < y.sum() < y.size:
        assert ranking_metrics(y, np.zeros_like(s), np.ones((1, y.size)))["auroc"][0] == 0.5


def test_delong_and_paired_bootstrap():
    rng = np.random.default_rng(5)
    y = (rng.random(500) < 0.3).astype(float)
    good, bad = y + rng.normal(0, 0.6, 500), y + rng.normal(0, 2.0, 500)
    d = delong_test(y, good, bad)
    assert d["auroc_diff"] == pytest.approx(roc_auc_score(y, good) - roc_auc_score(y, bad))
    assert d["p_value"] < 0.01
    same = delong_test(y, good, good)
    assert same["auroc_diff"] == 0 and same["p_value"] == 1.0
    boot = ClusterBootstrap.draw(np.arange(500), 200, 0)
    ra = boot.apply(ranking_metrics, y, good)["auroc"]
    rb = boot.apply(ranking_metrics, y, bad)["auroc"]
    pb = paired_bootstrap(ra, rb, roc_auc_score(y, good), roc_auc_score(y, bad))
    assert pb["ci_low"] > 0 and pb["p_value"] < 0.05
    assert percentile_ci(np.array([np.nan])) != percentile_ci(np.array([np.nan]))  # NaN pair when nothing defined
