"""The quality / out-of-distribution gate on real films: flags what is not a frontal chest film, passes held-out
NIH films, round-trips through the bundle, and is used by batch prediction."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from cxrkit.bundle import load_bundle
from cxrkit.data.decode import read_image, read_image_with_meta
from cxrkit.deploy.bench import _document, nih_split
from cxrkit.deploy.quality import QualityGate, QualityGateError, fit_gate, fit_quality_gate, rule_reason
from cxrkit.deploy.quality_features import colourfulness, explicit_checks, handcrafted_features
from cxrkit.data.errors import CxrError
from nih_like import real_films, variant

torch.set_num_threads(1)
N_FIT = 200


@pytest.fixture(scope="module")
def split(shared_data, tmp_path_factory):
    """(fit images, held-out real film paths). With only the committed 20 films: fit on photometric variants of
    12 of them (tests/nih_like.py), hold out the other 8, never seen in any form."""
    films = real_films(shared_data)
    if len(films) > N_FIT + 80:
        fit, held = nih_split(shared_data, n_fit=N_FIT, seed=0)
        return [read_image(p) for p in fit], held
    from cxrkit.data.phantom import generate

    fit_films, held = films[::5] + films[1::5] + films[2::5], films[3::5] + films[4::5]
    rng = np.random.default_rng(0)
    fit = [read_image(p) for p in fit_films]
    fit += [variant(fit[k % len(fit)], rng, geometric=True) for k in range(N_FIT // 2 - len(fit))]
    phantom = tmp_path_factory.mktemp("phantom") / "set"
    generate(phantom, n=N_FIT - len(fit), size=256, seed=0, workers=1)
    fit += [read_image(p) for p in sorted((phantom / "images").glob("*.png"))]
    return fit, held


@pytest.fixture(scope="module")
def gated_bundle(tmp_path_factory, split, make_tiny_bundle):
    out = make_tiny_bundle(tmp_path_factory.mktemp("gated"))
    fit_quality_gate(out, split[0], target_fpr=0.02, seed=0)
    return out


@pytest.fixture(scope="module")
def gate(gated_bundle):
    return QualityGate.from_bundle(load_bundle(gated_bundle))


def test_nih_split_is_disjoint(shared_data):
    n = len(real_films(shared_data))
    fit, held = nih_split(shared_data, n_fit=n // 2, seed=3)
    assert len(fit) == n // 2 and len(held) == n - n // 2 and not {p.name for p in fit} & {p.name for p in held}
    with pytest.raises(CxrError, match="need more than n_fit"):
        nih_split(shared_data, n_fit=n)


def test_passes_held_out_real_films(gate, split):
    held = split[1][:60]
    verdicts = gate.check_batch([read_image(p) for p in held])
    pass_rate = np.mean([v["ok"] for v in verdicts])
    # 90 % of 60 films; one miss allowed among the committed subset's 8
    assert pass_rate >= min(0.9, 1 - 1 / len(held)), [v for v in verdicts if not v["ok"]][:3]
    assert all(v["score"] >= 0 for v in verdicts if v["ok"])


def test_passes_real_chest_dicom(gate, shared_data):
    image, meta = read_image_with_meta(shared_data / "dicom" / "cr_monochrome2_jpeg_baseline.dcm")
    v = gate.check(image, meta)
    assert v["ok"], v


def test_flags_non_chest_images(gate, split, shared_data):
    rng = np.random.default_rng(0)
    film = read_image(split[1][0])
    cases = {
        "blank": np.full((256, 256), 128, np.uint8),
        "noise": rng.integers(0, 256, (256, 256), dtype=np.uint8),
        "inverted": 255 - film,
        "rotated": np.ascontiguousarray(np.rot90(film)),
        "document": _document(rng),
        "gradient": np.tile(np.linspace(0, 255, 256).astype(np.uint8), (256, 1)),
    }
    for name, image in cases.items():
        v = gate.check(image)
        assert not v["ok"], (name, v)
    assert "blank" in gate.check(cases["blank"])["reason"]
    assert "inverted" in gate.check(cases["inverted"])["reason"]
    # the abdomen film is refused by its header, and by its pixels alone too
    image, meta = read_image_with_meta(shared_data / "dicom" / "not_chest_abdomen_ot.dcm")
    assert "DICOM header" in gate.check(image, meta)["reason"]
    assert not gate.check(image)["ok"] and gate.check(image)["score"] < 0


def test_colour_photo_flagged_before_grey_conversion(gate, split):
    film = read_image(split[1][1])
    grey_bgr = cv2.cvtColor(film, cv2.COLOR_GRAY2BGR)
    assert colourfulness(grey_bgr) < 1
    photo = grey_bgr.copy()
    photo[:, :, 2] = np.clip(photo[:, :, 2].astype(int) + 80, 0, 255)  # a strongly tinted copy of a real film
    v = gate.check(photo)
    assert not v["ok"] and "colour" in v["reason"]
    assert gate.check(grey_bgr)["ok"]


def test_rule_checks_without_a_fitted_gate():
    assert "blank" in rule_reason(np.zeros((64, 64), np.uint8))
    assert "near-binary" in explicit_checks(np.where(np.eye(128, dtype=bool), 0, 255).astype(np.uint8))
    lateral = {"source_format": "dicom", "modality": "DX", "body_part": "CHEST", "view": "LL"}
    assert "lateral" in rule_reason(np.full((64, 64), 100, np.uint8) + np.arange(64, dtype=np.uint8), lateral)


def test_gate_round_trips_through_the_bundle(gated_bundle, gate, split):
    config = json.loads((gated_bundle / "config.json").read_text())
    qg = config["quality_gate"]
    assert qg["method"] == "lr-handcrafted" and qg["arrays"] == "quality_gate.safetensors" and qg["version"] == 1
    assert (gated_bundle / "quality_gate.safetensors").is_file()
    images = [read_image(p) for p in split[1][:5]]
    again = QualityGate.from_bundle(load_bundle(gated_bundle))
    np.testing.assert_allclose(again.density_scores(images), gate.density_scores(images))
    assert again.threshold == pytest.approx(qg["threshold"])


def test_threshold_targets_the_false_rejection_rate(split):
    if len(split[1]) < 80:
        pytest.skip("optional: a false-rejection rate needs 80 held-out real films; the committed subset has "
                    f"{len(split[1])} (set CXR_SHARED_DATA to the full reference data)")
    films = split[0][:100]
    gate, info = fit_gate(films, target_fpr=0.1, seed=1)
    # in-sample scores are optimistic, so at most ~target of the fitting films fall below the cross-fitted cut...
    assert np.mean(gate.density_scores(films) < gate.threshold) <= 0.1 and info["n_images"] == 100
    # ...while new films are rejected at about the target rate (out-of-fold scores are what set the cut)
    held = np.mean(gate.density_scores([read_image(p) for p in split[1][:80]]) < gate.threshold)
    assert 0.02 <= held <= 0.25, held


def test_fit_refuses_too_few_images_and_unknown_method(split):
    with pytest.raises(QualityGateError, match="at least"):
        fit_gate(split[0][:4])
    with pytest.raises(QualityGateError, match="unknown quality gate method"):
        fit_gate(split[0], method="magic")


def test_features_are_fixed_length_for_any_shape():
    rng = np.random.default_rng(0)
    a = handcrafted_features(rng.integers(0, 256, (300, 200), dtype=np.uint8))
    b = handcrafted_features(rng.integers(0, 256, (64, 640), dtype=np.uint8))
    assert a.shape == b.shape and a.dtype == np.float32 and np.isfinite(a).all()


def test_predict_files_uses_the_bundles_gate(gated_bundle, gate, split, tmp_path):
    from cxrkit.deploy.predict import predict_files

    noise = tmp_path / "noise.png"
    cv2.imwrite(str(noise), np.random.default_rng(0).integers(0, 256, (128, 128), dtype=np.uint8))
    film = next(p for p in split[1][2:] if gate.check(read_image(p))["ok"])
    rows = predict_files(load_bundle(gated_bundle), [film, noise])
    assert rows[0]["quality_ok"] and rows[0]["quality_score"] >= 0
    assert not rows[1]["quality_ok"] and rows[1]["quality_score"] < 0
