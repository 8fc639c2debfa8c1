"""Localisation scores (ChestX-ray8 protocol) and the report gallery, on caches with known boxes."""
from __future__ import annotations

from types import SimpleNamespace

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from cxrkit.bundle import Predictor
from cxrkit.data.labels import NIH_FINDINGS
from cxrkit.explain import ExplainError, evaluate_localisation, gallery
from cxrkit.explain.report import select_cases
from cxrkit.explain.localisation import best_overlaps, summarise
from cxrkit.models import create_model
from cxrkit.models.heads import LinearHead


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def brightness_predictor(size: int = 64, cell: int = 4) -> Predictor:
    """CAM = local brightness (mean pooling backbone, positive linear weights): it localises bright regions."""
    model = create_model("resnet10t", 14)
    model.backbone, model.num_features = nn.AvgPool2d(cell), 1
    model.head = LinearHead(1, 14)
    with torch.no_grad():
        model.head.fc.weight.fill_(2.0)
        model.head.fc.bias.fill_(-1.0)
    names = list(NIH_FINDINGS)
    return Predictor(model, {"label_names": names, "thresholds": {n: 0.5 for n in names},
                             "input": {"size": size, "preresize": size, "mean": 0.0, "std": 1.0}})


def bright_box_cache(n: int = 6, size: int = 64, seed: int = 0):
    """A cache-like object: dark films with one bright rectangle each, boxed under a finding."""
    rng = np.random.default_rng(seed)
    images = rng.normal(40, 5, (n, size, size)).clip(0, 255).astype(np.uint8)
    rows = []
    for i in range(n):
        w, h = rng.integers(10, 20, 2)
        x, y = rng.integers(0, size - 20, 2)
        images[i, y:y + h, x:x + w] = 230
        rows.append({"row": i, "image_id": f"img{i}", "label": NIH_FINDINGS[i % 3], "x": float(x), "y": float(y),
                     "w": float(w), "h": float(h)})
    return SimpleNamespace(images=images, boxes=pd.DataFrame(rows), size=size, label_names=NIH_FINDINGS)


def test_best_overlaps_and_summary():
    assert best_overlaps((0, 0, 10, 10), []) == (0.0, 0.0)
    b_iou, b_iobb = best_overlaps((0, 0, 10, 10), [(50, 50, 5, 5, 0.9), (0, 0, 5, 5, 0.5)])
    assert b_iou == pytest.approx(0.25) and b_iobb == pytest.approx(1.0)
    s = summarise(np.array([0.25, 0.0]), np.array([1.0, 0.3]), thresholds=(0.25, 0.5))
    assert s == {"n_boxes": 2, "acc_iobb@0.25": 1.0, "acc_iobb@0.5": 0.5, "acc_iou@0.25": 0.5, "acc_iou@0.5": 0.0,
                 "mean_best_iou": 0.125, "mean_best_iobb": 0.65}


def test_localisation_finds_bright_boxes():
    pred, cache = brightness_predictor(), bright_box_cache()
    res = evaluate_localisation(pred, cache, progress=False)
    assert set(res) == {"Atelectasis", "Cardiomegaly", "Effusion", "all"}
    for name in ("Atelectasis", "Cardiomegaly", "Effusion"):
        r = res[name]
        assert r["n_boxes"] == 2 and r["n_images"] == 2
        assert r["acc_iobb@0.5"] == 1.0 and r["acc_iou@0.25"] == 1.0
        assert r["mean_best_iou"] > 0.4
        assert r["acc_iobb@0.1"] >= r["acc_iobb@0.5"] >= r["acc_iobb@0.9"]
        assert r["acc_iobb@0.5"] >= r["acc_iou@0.5"]  # IoBB >= IoU box by box
    assert res["all"]["n_boxes"] == 6 and res["all"]["skipped_labels"] == []


def test_localisation_misses_wrong_boxes_skips_unknown_labels_and_filters_rows():
    pred, cache = brightness_predictor(), bright_box_cache()
    extra = pd.DataFrame([
        # a Mass box on film 0 where the film is dark: the heatmap is elsewhere, so it is missed at every T
        {"row": 0, "image_id": "img0", "label": "Mass", "x": 0.0, "y": 0.0, "w": 1.0, "h": 1.0},
        {"row": 1, "image_id": "img1", "label": "Fracture", "x": 0.0, "y": 0.0, "w": 9.0, "h": 9.0},
    ])
    b0 = cache.boxes.iloc[0]
    far = 0.0 if b0.x > 10 or b0.y > 10 else 54.0
    extra.loc[0, ["x", "y", "w", "h"]] = [far, far, 8.0, 8.0]
    cache.boxes = pd.concat([cache.boxes, extra], ignore_index=True)
    res = evaluate_localisation(pred, cache, rows=[0, 1, 2], method="cam", thresholds=(0.1, 0.5), progress=False)
    assert res["Mass"]["n_boxes"] == 1
    assert res["Mass"]["acc_iobb@0.1"] == 0.0 and res["Mass"]["mean_best_iou"] == 0.0
    assert res["all"]["skipped_labels"] == ["Fracture"]
    assert res["all"]["n_boxes"] == 4 and res["all"]["n_images"] == 3
    assert set(res["all"]) >= {"acc_iobb@0.1", "acc_iobb@0.5", "acc_iou@0.1", "acc_iou@0.5"}


def test_localisation_bad_input():
    pred = brightness_predictor()
    with pytest.raises(ExplainError, match="boxes table"):
        evaluate_localisation(pred, SimpleNamespace(images=np.zeros((1, 64, 64), np.uint8), boxes=None))
    with pytest.raises(ExplainError, match="thresholds"):
        evaluate_localisation(pred, bright_box_cache(), thresholds=(0.5, 1.5))


def test_localisation_on_a_phantom_cache(tmp_path):
    phantom = pytest.importorskip("cxrkit.data.phantom")
    if not hasattr(phantom, "generate"):
        pytest.skip("cxrkit.data.phantom.generate is not available in this checkout")
    from cxrkit.data.cache import prepare

    src = tmp_path / "phantom"
    phantom.generate(src, 24, 128, seed=0, progress=False)
    cache = prepare(src, tmp_path / "cache", size=64, workers=1, progress=False)
    assert len(cache.boxes), "the phantom set should carry boxes"
    res = evaluate_localisation(brightness_predictor(64), cache, progress=False)
    assert res["all"]["n_boxes"] == int(cache.boxes["label"].isin(NIH_FINDINGS).sum())
    for name, r in res.items():
        assert 0.0 <= r["acc_iobb@0.5"] <= 1.0 and r["acc_iobb@0.5"] >= r["acc_iou@0.5"], name
        assert r["mean_best_iou"] <= r["mean_best_iobb"] + 1e-9, name


def test_select_cases_takes_confident_true_and_false_positives():
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.95], [0.6, 0.3], [0.4, 0.99]])
    labels = np.array([[1, 0], [0, 1], [1, np.nan], [0, 0], [1, 1]], float)
    cases = select_cases(probs, labels, np.array([0.5, 0.5]), k=2)
    assert cases == [(0, 0, "TP"), (1, 0, "FP"), (4, 1, "TP")]  # row 4 finding 0 is under threshold; NaN never counts
    # a short kind leaves its places to the other: one TP, three FPs, k=4 -> 1 TP + 3 FPs
    p = np.array([[0.9], [0.8], [0.7], [0.6]])
    y = np.array([[0], [1], [0], [0]], float)
    assert select_cases(p, y, np.array([0.5]), k=4) == [(1, 0, "TP"), (0, 0, "FP"), (2, 0, "FP"), (3, 0, "FP")]


def test_gallery_renders_pngs():
    pred, cache = brightness_predictor(), bright_box_cache(n=6)
    rows = np.arange(6)
    labels = np.zeros((6, 14), np.float32)
    labels[[0, 3], 0] = 1
    probs = np.full((6, 14), 0.1, np.float32)
    probs[:, 0] = [0.9, 0.8, 0.3, 0.7, 0.2, 0.6]
    items = gallery(pred, cache, rows, probs, labels, k=4)
    assert [(d["finding"], d["row"], d["kind"]) for d in items] == [
        ("Atelectasis", 0, "TP"), ("Atelectasis", 3, "TP"), ("Atelectasis", 1, "FP"), ("Atelectasis", 5, "FP")]
    assert items[0]["prob"] == pytest.approx(0.9)
    img = cv2.imdecode(np.frombuffer(items[0]["png_bytes"], np.uint8), cv2.IMREAD_COLOR)
    assert img.shape[1] == 256 and img.shape[0] > 256  # 64-px cache images are enlarged for legible captions
    with pytest.raises(ExplainError, match="rows"):
        gallery(pred, cache, rows[:3], probs, labels)


def test_localisation_on_real_nih_boxes(shared_data, tmp_path):
    """The 6 NIH sample images that have radiologist boxes, through `prepare` (boxes rescaled to the cache) and
    evaluate_localisation: every box is scored once, under its own finding."""
    import shutil

    from cxrkit.data.cache import prepare

    boxes = pd.read_csv(shared_data / "nih-metadata" / "BBox_List_2017.csv.gz")
    table = pd.read_csv(shared_data / "nih-sample" / "Data_Entry_2017.csv")
    boxes = boxes[boxes["Image Index"].isin(table["Image Index"])]
    assert len(boxes) >= 5
    root = tmp_path / "nih"
    (root / "images").mkdir(parents=True)
    for name in boxes["Image Index"].unique():
        shutil.copy(shared_data / "nih-sample" / "images" / name, root / "images" / name)
    table[table["Image Index"].isin(boxes["Image Index"])].to_csv(root / "Data_Entry_2017.csv", index=False)
    boxes.to_csv(root / "BBox_List_2017.csv", index=False)
    cache = prepare(root, tmp_path / "cache", size=64, workers=1, progress=False)
    assert len(cache.boxes) == len(boxes)
    first = boxes.iloc[0]
    got = cache.boxes[cache.boxes["image_id"] == first["Image Index"]].iloc[0]
    assert got["x"] == pytest.approx(first.iloc[2] * 64 / 1024, abs=0.01)  # 1024-px frame -> 64-px cache

    res = evaluate_localisation(brightness_predictor(64), cache, method="cam", progress=False)
    assert res["all"]["n_boxes"] == len(boxes)
    assert {k for k in res if k != "all"} == set(boxes["Finding Label"])
    for name, r in res.items():
        assert 0.0 <= r["mean_best_iou"] <= r["mean_best_iobb"] + 1e-9 <= 1.0 + 1e-9, name
        for t in (0.1, 0.25, 0.5, 0.75, 0.9):
            assert r[f"acc_iobb@{t:g}"] >= r[f"acc_iou@{t:g}"], name
