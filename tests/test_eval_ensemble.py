"""Ensemble bundles: built from member bundles, loaded through load_bundle, predicting like a bundle."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cxrkit.bundle import BundleError, load_bundle, save_bundle
from cxrkit.bundle.ensemble import EnsemblePredictor
from cxrkit.data.labels import NIH_FINDINGS
from cxrkit.evaluation.ensembles import EnsembleError, build_ensemble
from cxrkit.models import create_model


@pytest.fixture(scope="module")
def members(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("members")
    paths = []
    for i in range(2):
        torch.manual_seed(i)
        paths.append(save_bundle(root / f"b{i}", create_model("resnet10t", 14), label_names=NIH_FINDINGS,
                                 input_size=48, preresize=48, mean=0.449, std=0.226))
    return paths


@pytest.fixture(scope="module")
def cache(tmp_path_factory, shared_data):
    from cxrkit.data import prepare

    return prepare(shared_data / "nih-sample", tmp_path_factory.mktemp("c") / "cache", size=48, workers=1,
                   progress=False)


def _images(n=3, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (70 + i, 60), dtype=np.uint8) for i in range(n)]


@pytest.mark.parametrize("method", ["mean", "vote", "max"])
def test_ensemble_loads_and_predicts(members, tmp_path, method):
    path = build_ensemble(members, tmp_path / "ens", method=method)
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["model"] is None and cfg["ensemble"]["members"] == ["members/0", "members/1"]
    assert (path / "members" / "1" / "model.safetensors").is_file()
    ens = load_bundle(path)
    assert isinstance(ens, EnsemblePredictor) and ens.label_names == NIH_FINDINGS
    out = ens.predict_full(_images())
    assert out["probs"].shape == (3, 14) and out["abnormality"].shape == (3,)
    assert np.all((out["probs"] >= 0) & (out["probs"] <= 1))
    singles = [load_bundle(m).predict(_images()) for m in members]
    if method == "mean":
        np.testing.assert_allclose(out["probs"], (singles[0] + singles[1]) / 2, atol=1e-5)
    elif method == "max":
        np.testing.assert_allclose(out["probs"], np.maximum(*singles), atol=1e-5)
    else:
        votes = [(p >= m.thresholds).astype(float) for p, m in zip(singles, ens.members)]
        np.testing.assert_allclose(out["probs"], np.clip((votes[0] + votes[1]) / 2, 1e-6, 1 - 1e-6), atol=1e-5)
    assert ens.positives(out["probs"]).shape == (3, 14)
    fast = ens.forward_uint8(ens.to_uint8_batch(_images()))
    assert fast["probs"].shape == (3, 14)
    # no member has a normal/abnormal head: the score is the largest finding probability of the ensemble itself
    np.testing.assert_allclose(out["abnormality"], out["probs"].max(axis=1), atol=1e-6)
    np.testing.assert_allclose(fast["abnormality"], fast["probs"].max(axis=1), atol=1e-6)


def test_ensemble_with_a_normal_head_member_combines_member_scores(members, tmp_path):
    torch.manual_seed(5)
    headed = save_bundle(tmp_path / "h", create_model("resnet10t", 14, normal_head=True), label_names=NIH_FINDINGS,
                         input_size=48, preresize=48, mean=0.449, std=0.226)
    ens = load_bundle(build_ensemble([members[0], headed], tmp_path / "ens", method="mean"))
    out = ens.predict_full(_images())
    singles = [load_bundle(m).predict_full(_images())["abnormality"] for m in (members[0], headed)]
    np.testing.assert_allclose(out["abnormality"], (singles[0] + singles[1]) / 2, atol=1e-5)


def test_weighted_ensemble_fits_on_validation(members, cache, tmp_path):
    path = build_ensemble(members, tmp_path / "w", method="weighted", cache=cache.path, progress=False)
    cfg = json.loads((path / "config.json").read_text())
    w = cfg["ensemble"]["weights"]
    assert len(w) == 2 and sum(w) == pytest.approx(1.0) and all(x > 0 for x in w)
    assert cfg["threshold_policy"] == "youden-val" and set(cfg["thresholds"]) == set(NIH_FINDINGS)
    ens = load_bundle(path)
    np.testing.assert_allclose(ens.weights, w)
    assert ens.predict(_images(2)).shape == (2, 14)


def test_ensemble_errors(members, tmp_path):
    with pytest.raises(EnsembleError, match="--cache"):
        build_ensemble(members, tmp_path / "x", method="weighted")
    with pytest.raises(EnsembleError, match="unknown ensemble method"):
        build_ensemble(members, tmp_path / "x", method="median")
    other = save_bundle(tmp_path / "other", create_model("resnet10t", 2), label_names=["a", "b"], input_size=48,
                        mean=0.5, std=0.25)
    with pytest.raises(EnsembleError, match="same findings"):
        build_ensemble([members[0], other], tmp_path / "y")
    path = build_ensemble(members, tmp_path / "z")
    with pytest.raises(EnsembleError, match="not empty"):
        build_ensemble(members, path)
    cfg = json.loads((path / "config.json").read_text())
    cfg["ensemble"]["members"] = ["../../etc"]
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(BundleError, match="outside the bundle"):
        load_bundle(path)


def test_ensemble_cli(members, tmp_path):
    from typer.testing import CliRunner

    from cxrkit.cli import build_app

    app = build_app(stages=("cxrkit.evaluation.cli",))
    res = CliRunner().invoke(app, ["ensemble", str(members[0]), str(members[1]), "--out", str(tmp_path / "e"),
                                   "--method", "max"])
    assert res.exit_code == 0, res.output
    assert load_bundle(tmp_path / "e").method == "max"
