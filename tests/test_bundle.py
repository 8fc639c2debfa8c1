"""The bundle format and its Predictor."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cxrkit import RESEARCH_NOTICE
from cxrkit.bundle import BundleError, load_bundle, read_bundle_config, save_bundle, write_bundle_config
from cxrkit.bundle.calibration import apply_calibration
from cxrkit.data.labels import NIH_FINDINGS
from cxrkit.data.transforms import fit_square
from cxrkit.models import create_model, to_model_input

torch.set_num_threads(1)


@pytest.fixture()
def bundle(tmp_path):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = create_model("resnet10t", 14)
    thr = {n: 0.1 + 0.05 * i for i, n in enumerate(NIH_FINDINGS)}
    save_bundle(tmp_path / "b", model, label_names=NIH_FINDINGS, input_size=48, preresize=64, mean=0.449, std=0.226,
                thresholds=thr, provenance={"seed": 3}, metrics={"mean_auroc": 0.5})
    return tmp_path / "b", model.eval()


def test_roundtrip_config_and_files(bundle):
    path, _ = bundle
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors"]
    cfg = read_bundle_config(path)
    assert cfg["format"] == "cxrkit-bundle" and cfg["notice"] == RESEARCH_NOTICE
    assert cfg["input"]["size"] == 48 and cfg["input"]["preresize"] == 64
    assert cfg["provenance"]["seed"] == 3 and "cxrkit_version" in cfg["provenance"]
    pred = load_bundle(path)
    assert pred.label_names == NIH_FINDINGS
    np.testing.assert_allclose(pred.thresholds, [0.1 + 0.05 * i for i in range(14)], rtol=1e-6)


def test_predictor_matches_the_model_on_training_geometry(bundle):
    path, model = bundle
    pred = load_bundle(path)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (100, 80), dtype=np.uint8), rng.integers(0, 256, (64, 64), dtype=np.uint8)]
    probs = pred.predict(images)
    u8 = torch.from_numpy(np.stack([fit_square(im, 64)[0] for im in images])).unsqueeze(1)
    with torch.inference_mode():
        expect = torch.sigmoid(model(to_model_input(u8, 48, 0.449, 0.226))).numpy()
    np.testing.assert_allclose(probs, expect, atol=1e-6)
    full = pred.predict_full(images)
    np.testing.assert_allclose(full["abnormality"], probs.max(1))
    assert pred.positives(probs).shape == probs.shape
    assert pred.predict([]).shape == (0, 14)
    with pytest.raises(ValueError, match="uint8"):
        pred.predict([np.zeros((8, 8), np.float32)])


def test_temperature_calibration_applied(bundle):
    path, _ = bundle
    cfg = read_bundle_config(path)
    raw = load_bundle(path).predict_full([np.full((64, 64), 100, np.uint8)])["logits"]
    cfg["calibration"] = {"method": "temperature", "temperature": [2.0] * 14}
    write_bundle_config(path, cfg)
    probs = load_bundle(path).predict([np.full((64, 64), 100, np.uint8)])
    np.testing.assert_allclose(probs, 1 / (1 + np.exp(-raw / 2.0)), rtol=1e-5)
    iso = apply_calibration(np.zeros((1, 1)), {"method": "isotonic", "x": [[0.0, 1.0]], "y": [[0.2, 0.4]]})
    np.testing.assert_allclose(iso, [[0.3]], rtol=1e-6)


def test_refusals(bundle, tmp_path):
    path, _ = bundle
    with pytest.raises(BundleError, match="not a cxrkit bundle"):
        load_bundle(tmp_path / "nowhere")
    cfg = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**cfg, "format_version": 99}))
    with pytest.raises(BundleError, match="newer"):
        load_bundle(path)
    (path / "config.json").write_text(json.dumps({**cfg, "model": {**cfg["model"], "arch": "mobilenetv3_small"}}))
    with pytest.raises(BundleError, match="do not match"):
        load_bundle(path)
    (path / "config.json").write_text(json.dumps(cfg))
    (path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(BundleError, match="safetensors"):
        load_bundle(path)
    with pytest.raises(BundleError, match="lacks"):
        write_bundle_config(path, {"format": "cxrkit-bundle"})
