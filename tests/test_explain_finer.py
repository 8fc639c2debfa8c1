"""Per-finding box parameters (boxes_for, cxr tune-boxes) and the finer maps (LayerCAM, cam-layercam)."""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from box_agreement import assert_box_size_maps_agree
from torch import nn

from cxrkit.bundle import Predictor, load_bundle, read_bundle_config, write_bundle_config
from cxrkit.data.labels import NIH_FINDINGS
from cxrkit.explain import BoxParams, ExplainError, box_params, boxes_for, explain_batch
from cxrkit.explain.finding_boxes import boxes_with
from cxrkit.models import create_model
from cxrkit.models.heads import LinearHead

NAMES = list(NIH_FINDINGS)


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def two_blob_map(size: int = 100) -> np.ndarray:
    """A strong blob and a weaker one: 0.5 x peak keeps both, 0.8 x peak only the strong one."""
    yy, xx = np.mgrid[0:size, 0:size]
    return (np.exp(-((xx - 25) ** 2 + (yy - 30) ** 2) / 60.0)
            + 0.65 * np.exp(-((xx - 70) ** 2 + (yy - 65) ** 2) / 60.0)).astype(np.float32)


def test_boxes_for_uses_the_bundles_tuned_parameters_per_finding_and_method():
    heat = two_blob_map()
    tuned = {"explain": {"boxes": {"cam": {"Nodule": {"threshold": 0.8, "min_area_frac": 0.0, "max_boxes": 3}}}}}
    pred = SimpleNamespace(config=tuned)
    assert box_params(pred, "Nodule", "cam") == (BoxParams(0.8, 0.0, 3), True)
    assert box_params(pred, "Effusion", "cam") == (BoxParams(), False)  # not tuned: the defaults
    assert box_params(pred, "Nodule", "layercam") == (BoxParams(), False)  # tuned for another method only
    one = boxes_for(pred, "Nodule", heat, "cam")
    two = boxes_for(pred, "Effusion", heat, "cam")
    assert len(one) == 1 and len(two) == 2
    x, y, w, h, score = one[0]
    assert x <= 25 <= x + w and y <= 30 <= y + h and score == pytest.approx(1.0, abs=0.01)
    assert w * h < two[0][2] * two[0][3]  # the higher threshold keeps a tighter box
    # an older bundle's single threshold still applies when nothing was tuned
    assert box_params({"explain": {"box_threshold": 0.8}}, "Effusion", "cam")[0].threshold == 0.8
    with pytest.raises(ExplainError, match="threshold"):
        BoxParams(threshold=0.0)


def test_boxes_are_found_on_a_reduced_map_and_returned_in_its_pixels():
    small = two_blob_map(100)
    big = np.kron(small, np.ones((8, 8), np.float32))  # 800 px: reduced to 256 for the components
    b_small = boxes_with(small, BoxParams(0.8, 0.0, 1))[0]
    b_big = boxes_with(big, BoxParams(0.8, 0.0, 1))[0]
    np.testing.assert_allclose(np.array(b_big[:4]) / 8, b_small[:4], atol=1.0)


def stride_model(size: int = 64) -> Predictor:
    """Backbone = brightness pooled 4 x 4 (ReLU: the stride-4 stage) then 2 x 2 (the stride-8 feature map), a
    positive linear head: CAM is brightness on an 8-px grid, LayerCAM brightness on the 4-px grid."""
    return _brightness_model(nn.Sequential(nn.AvgPool2d(4), nn.ReLU(), nn.AvgPool2d(2)), size)


def _brightness_model(backbone: nn.Module, size: int) -> Predictor:
    """A one-feature ``backbone`` (pooled brightness) under a positive linear head, as a bundle predictor."""
    model = create_model("resnet10t", 14)
    model.backbone, model.num_features, model.head = backbone, 1, LinearHead(1, 14)
    with torch.no_grad():
        model.head.fc.weight.fill_(2.0)
        model.head.fc.bias.fill_(-1.0)
    return Predictor(model, {"label_names": NAMES, "thresholds": {n: 0.5 for n in NAMES},
                             "input": {"size": size, "preresize": size, "mean": 0.0, "std": 1.0}})


def test_layercam_is_finer_than_cam_on_a_small_bright_spot():
    pytest.importorskip("pytorch_grad_cam")
    pred = stride_model()
    image = np.full((1, 64, 64), 20, np.uint8)
    image[0, 28:32, 24:28] = 250  # one 4 x 4 spot: one cell of the stride-4 grid, a quarter cell at stride 8
    maps = {m: explain_batch(pred, image, [0], m)[0] for m in ("cam", "layercam", "cam-layercam")}
    truth = (24, 28, 4, 4)
    for name, heat in maps.items():
        assert heat.shape == (64, 64) and np.isfinite(heat).all() and 0 <= heat.min() and heat.max() == 1.0, name
    hot = {m: int((h >= 0.5).sum()) for m, h in maps.items()}
    assert hot["layercam"] < 0.6 * hot["cam"], hot
    assert hot["cam-layercam"] <= hot["layercam"], hot
    from cxrkit.explain import iou

    box = {m: boxes_with(h, BoxParams(0.5, 0.0, 1))[0] for m, h in maps.items()}
    assert iou(truth, box["layercam"]) > iou(truth, box["cam"]) + 0.1, box


def boxed_cache(n: int = 8, size: int = 64, seed: int = 0):
    """Dark films with a bright rectangle boxed under one of two findings (cache-like: images, boxes, rows)."""
    rng = np.random.default_rng(seed)
    images = rng.normal(40, 5, (n, size, size)).clip(0, 255).astype(np.uint8)
    rows = []
    for i in range(n):
        w, h = rng.integers(8, 16, 2)
        x, y = rng.integers(0, size - 16, 2)
        images[i, y:y + h, x:x + w] = 230
        rows.append({"row": i, "image_id": f"i{i}", "label": NAMES[i % 2], "x": float(x), "y": float(y),
                     "w": float(w), "h": float(h)})
    return SimpleNamespace(images=images, boxes=pd.DataFrame(rows), rows=lambda split: np.arange(n))


def test_tune_boxes_fits_and_stores_parameters_that_outputs_then_use(tmp_path, make_tiny_bundle):
    from cxrkit.explain import evaluate_localisation
    from cxrkit.explain.box_tuning import MAX_BOXES, MIN_AREA_FRACS, THRESHOLDS, store_tuning, tune_boxes

    bundle = make_tiny_bundle(tmp_path / "b")
    pred, cache = load_bundle(bundle), boxed_cache()
    result = tune_boxes(pred, cache, np.arange(8), methods=("cam",), batch_size=8, progress=False)
    fitted = result["methods"]["cam"]
    assert set(fitted) == {NAMES[0], NAMES[1]} and result["method"] == "cam" and result["n_boxes"] == 8
    for p in fitted.values():
        assert p["threshold"] in THRESHOLDS and p["min_area_frac"] in MIN_AREA_FRACS and p["max_boxes"] in MAX_BOXES
        assert p["val_acc"] >= p["val_acc_default"]  # the defaults are a grid point: tuning never does worse
    store_tuning(bundle, result, "val")
    cfg = read_bundle_config(bundle)
    assert cfg["explain"]["method"] == "cam" and cfg["explain"]["box_tuning"]["split"] == "val"
    stored = cfg["explain"]["boxes"]["cam"]
    assert stored == {f: {k: p[k] for k in ("threshold", "min_area_frac", "max_boxes")} for f, p in fitted.items()}
    # a reloaded bundle's boxes follow them, and scoring with them reproduces the tuned accuracy
    again = load_bundle(bundle)
    assert box_params(again, NAMES[0], "cam") == (BoxParams(**stored[NAMES[0]]), True)
    res = evaluate_localisation(again, cache, np.arange(8), "cam", progress=False)
    for f, p in fitted.items():
        assert res[f]["acc_iobb@0.5"] == pytest.approx(p["val_acc"])
    # retuning keeps other methods' parameters
    cfg["explain"]["boxes"]["layercam"] = {NAMES[0]: stored[NAMES[0]]}
    write_bundle_config(bundle, cfg)
    store_tuning(bundle, result, "val")
    assert "layercam" in read_bundle_config(bundle)["explain"]["boxes"]


def test_localise_table_markdown_and_figure(tmp_path, make_tiny_bundle):
    from cxrkit.explain.box_tuning import localisation_table
    from cxrkit.explain.localise_report import figure, markdown

    pred, cache = load_bundle(make_tiny_bundle(tmp_path / "b")), boxed_cache()
    result = localisation_table(pred, cache, np.arange(8), methods=("cam",), batch_size=8, progress=False)
    entry = result["methods"]["cam"]
    assert set(entry) == {"ms_per_map", "fixed", "default"} and entry["ms_per_map"] > 0  # nothing tuned yet
    text = markdown(result)
    assert "| finding | boxes | cam fixed 0.5 | cam defaults |" in text and "| all | 8 |" in text
    assert figure(result, tmp_path / "l.png").stat().st_size > 5000
    json.dumps(result)  # what `cxr localise --out` writes


def test_methods_option_names_the_known_methods():
    from cxrkit.explain.cli import _methods

    assert _methods("cam, layercam,cam") == ["cam", "layercam"]
    with pytest.raises(ExplainError, match="unknown method.*camm.*cam-layercam"):
        _methods("camm")


def two_stage_model(size: int = 64) -> Predictor:
    """Brightness pooled to stride 2 (ReLU), stride 4 (ReLU), then the stride-8 feature map: LayerCAM reads the
    stride-4 stage, LayerCAM-x4 the stride-2 one, and LayerCAM-x8 finds no stride-1 stage."""
    return _brightness_model(nn.Sequential(nn.AvgPool2d(2), nn.ReLU(), nn.AvgPool2d(2), nn.ReLU(), nn.AvgPool2d(2)),
                             size)


def test_layercam_x4_reads_the_stage_four_times_finer():
    pytest.importorskip("pytorch_grad_cam")
    from cxrkit.explain.finer import find_finer_layer

    pred = two_stage_model()
    image = np.full((1, 64, 64), 20, np.uint8)
    image[0, 30:32, 20:22] = 250  # a 2 x 2 spot: one stride-2 cell
    maps = {m: explain_batch(pred, image, [0], m)[0] for m in ("layercam", "layercam-x4")}
    hot = {m: int((h >= 0.5).sum()) for m, h in maps.items()}
    assert hot["layercam-x4"] < 0.6 * hot["layercam"], hot
    x = torch.zeros(1, 1, 64, 64)
    assert find_finer_layer(pred.model, x, 2) is pred.model.backbone[3]
    assert find_finer_layer(pred.model, x, 4) is pred.model.backbone[1]  # both remembered, per factor
    with pytest.raises(ExplainError, match="no layer at 64 x 64"):
        explain_batch(pred, image, [0], "layercam-x8")


def test_per_finding_methods_drive_maps_and_boxes():
    """A bundle whose explain.per_finding gives Atelectasis CAM and Cardiomegaly LayerCAM: "auto" (the stored
    "per-finding") makes each finding's map with its own method, and boxes_for uses the parameters tuned for it."""
    pytest.importorskip("pytorch_grad_cam")
    from cxrkit.explain.cam import concrete_method
    from cxrkit.explain.finding_boxes import finding_method

    pred = stride_model()
    a, c, e = NAMES[0], NAMES[1], NAMES[2]
    pred.config["explain"] = {
        "method": "per-finding", "per_finding": {"methods": {a: "cam", c: "layercam"}, "default": "cam"},
        "boxes": {"cam": {a: {"threshold": 0.9, "min_area_frac": 0.0, "max_boxes": 1}},
                  "layercam": {c: {"threshold": 0.3, "min_area_frac": 0.0, "max_boxes": 2}}}}
    images = np.full((2, 64, 64), 20, np.uint8)
    images[:, 28:32, 24:28] = 250
    assert concrete_method(pred) == "per-finding"
    assert [finding_method(pred, n) for n in (a, c, e)] == ["cam", "layercam", "cam"]
    got = explain_batch(pred, images, [0, 1])
    np.testing.assert_allclose(got[0], explain_batch(pred, images[:1], [0], "cam")[0], atol=1e-6)
    np.testing.assert_allclose(got[1], explain_batch(pred, images[1:], [1], "layercam")[0], atol=1e-6)
    assert not np.allclose(got[0], got[1], atol=1e-2)  # the two methods really differ here
    assert box_params(pred, a, "per-finding") == (BoxParams(0.9, 0.0, 1), True)
    assert box_params(pred, c, "per-finding") == (BoxParams(0.3, 0.0, 2), True)
    assert box_params(pred, e, "per-finding") == (BoxParams(), False)  # its method (cam) has nothing for it
    assert boxes_for(pred, c, got[1], "per-finding") == boxes_with(got[1], BoxParams(0.3, 0.0, 2))
    del pred.config["explain"]["per_finding"]
    with pytest.raises(ExplainError, match="per-finding.*tune-boxes"):
        concrete_method(pred, "per-finding")


def test_choose_per_finding_moves_a_finding_only_for_a_strict_gain():
    from cxrkit.explain.box_tuning import choose_per_finding

    def p(acc, n):
        return {"val_acc": acc, "val_acc_default": 0.0, "n_boxes": n}

    fitted = {"cam": {"A": p(0.5, 10), "B": p(0.2, 10)}, "layercam": {"A": p(0.5, 10), "B": p(0.6, 10)}}
    chosen = choose_per_finding(fitted, {"cam": 0.35, "layercam": 0.55})
    assert chosen["default"] == "layercam" and chosen["methods"] == {"A": "layercam", "B": "layercam"}
    fitted["cam"]["A"] = p(0.9, 10)
    chosen = choose_per_finding(fitted, {"cam": 0.55, "layercam": 0.55})
    assert chosen["methods"] == {"A": "cam", "B": "layercam"} and chosen["val_acc"] == pytest.approx(0.75)


def test_tune_boxes_per_finding_round_trips_through_the_bundle(tmp_path, make_tiny_bundle):
    pytest.importorskip("pytorch_grad_cam")
    from cxrkit.explain import evaluate_localisation
    from cxrkit.explain.box_tuning import store_tuning, tune_boxes
    from cxrkit.explain.finding_boxes import finding_method

    bundle = make_tiny_bundle(tmp_path / "b")
    pred, cache = load_bundle(bundle), boxed_cache()
    result = tune_boxes(pred, cache, np.arange(8), methods=("cam", "layercam"), batch_size=8, progress=False)
    chosen = result["per_finding"]["methods"]
    assert set(chosen) == {NAMES[0], NAMES[1]} and set(chosen.values()) <= {"cam", "layercam"}
    single = max(result["overall"]["cam"], result["overall"]["layercam"])
    assert result["overall"]["per-finding"] >= single
    assert (result["method"] == "per-finding") == (result["overall"]["per-finding"] > single)
    store_tuning(bundle, result, "val")
    again = load_bundle(bundle)
    assert read_bundle_config(bundle)["explain"]["per_finding"] == result["per_finding"]
    assert {f: finding_method(again, f) for f in chosen} == chosen
    res = evaluate_localisation(again, cache, np.arange(8), "per-finding", progress=False)
    for f, m in chosen.items():  # each finding scored with its own method's maps and parameters
        assert res[f]["acc_iobb@0.5"] == pytest.approx(result["methods"][m][f]["val_acc"])
    assert res["all"]["acc_iobb@0.5"] == pytest.approx(result["overall"]["per-finding"])


def test_tune_boxes_default_methods_skip_the_stages_a_model_lacks():
    """Without a method list, tune-boxes tries every default method and skips (saying why) the LayerCAM stages the
    model has no layer for; a method asked for by name must work."""
    pytest.importorskip("pytorch_grad_cam")
    from cxrkit.explain.box_tuning import TUNE_METHODS, tune_boxes

    pred, cache = two_stage_model(), boxed_cache()  # stride-2 and stride-4 stages, no stride-1 one
    result = tune_boxes(pred, cache, np.arange(8), batch_size=8, progress=False, per_finding=False)
    assert set(result["skipped"]) == {"layercam-x8"} and "no layer" in result["skipped"]["layercam-x8"]
    assert set(result["methods"]) == set(TUNE_METHODS) - {"layercam-x8"}
    with pytest.raises(ExplainError, match="no layer"):
        tune_boxes(pred, cache, np.arange(8), methods=("cam", "layercam-x8"), batch_size=8, progress=False)


@pytest.mark.parametrize("method", ["cam", "layercam"])
@pytest.mark.parametrize("crop", [None, (slice(0, 700), slice(100, 1000))])
def test_torch_maps_made_at_box_size_give_the_full_size_boxes(make_tiny_bundle, shared_data, tmp_path, method, crop):
    """predict and the DICOM node make the torch model's maps at most BOX_SIDE px when they are only for boxes
    (``explain_images(shapes=)``), scaled to the film, as for the graph's CAM: on a real CR film (and a non-square
    crop) the boxes agree with those of the full-size maps within a map pixel (4 film pixels)."""
    from cxrkit.data.decode import read_image
    from cxrkit.explain import explain_images
    from cxrkit.explain.finding_boxes import box_map_shape

    image = read_image(shared_data / "dicom" / "cr_monochrome2_jpeg_baseline.dcm")
    image = np.ascontiguousarray(image[crop]) if crop else image
    pred = load_bundle(make_tiny_bundle(tmp_path / "b", size=128))
    names = NAMES[:6]
    shape = box_map_shape(*image.shape)
    full = explain_images(pred, [image], names, method=method)[0]
    small = explain_images(pred, [image], names, method=method, shapes=[shape])[0]
    assert all(m.shape == shape for m in small.values()) and max(shape) == 256
    assert_box_size_maps_agree(((full[n], small[n]) for n in names), image.shape, score_tol=0.02)
    with pytest.raises(ExplainError, match="shapes has 2 entries for 1 images"):
        explain_images(pred, [image], names, shapes=[shape, shape])
