"""Heatmaps: CAM against a hand computation, a trained model localising a square, Grad-CAM on real backbones."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from cxrkit.bundle import Predictor, load_bundle, save_bundle
from cxrkit.data.labels import NIH_FINDINGS
from cxrkit.explain import ExplainError, boxes_from_heatmap, iobb
from cxrkit.explain.cam import concrete_method, explain_batch, explain_images, resolve_method
from cxrkit.explain.gradcam import find_target_layer
from cxrkit.models import create_model
from cxrkit.models.heads import LinearHead


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _config(size: int, n: int = 14, mean: float = 0.0, std: float = 1.0) -> dict:
    names = list(NIH_FINDINGS[:n])
    return {"label_names": names, "thresholds": {k: 0.5 for k in names},
            "input": {"size": size, "preresize": size, "mean": mean, "std": std}}


def brightness_predictor(size: int = 64, cell: int = 8, weight: float = 2.0) -> Predictor:
    """A CXRModel whose 'backbone' is cell x cell mean pooling (1 feature = local brightness) and whose linear head
    weighs it by ``weight``: its CAM is known in closed form."""
    model = create_model("resnet10t", 14)
    model.backbone = nn.AvgPool2d(cell)
    model.num_features = 1
    model.head = LinearHead(1, 14)
    with torch.no_grad():
        model.head.fc.weight.fill_(weight)
        model.head.fc.bias.fill_(-1.0)
    return Predictor(model, _config(size))


def square_images(rng: np.random.Generator, n: int, size: int = 64, side: int = 12):
    imgs = rng.normal(70, 8, (n, size, size)).clip(0, 255).astype(np.uint8)
    boxes = []
    for img in imgs:
        x, y = rng.integers(0, size - side, 2)
        img[y:y + side, x:x + side] = 230
        boxes.append((int(x), int(y), side, side))
    return imgs, boxes


def test_cam_equals_hand_computation():
    pred = brightness_predictor(size=64, cell=8, weight=2.0)
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (3, 64, 64), dtype=np.uint8)
    maps = explain_batch(pred, imgs, [0, 5, 13], method="cam")
    assert maps.shape == (3, 64, 64) and maps.dtype == np.float32
    for img, m in zip(imgs, maps):
        cells = (img / 255.0).reshape(8, 8, 8, 8).mean(axis=(1, 3))          # the 8 x 8 feature map
        cam = np.maximum(2.0 * cells, 0).astype(np.float32)                   # ReLU(w . f)
        cam = cv2.resize(cam, (64, 64), interpolation=cv2.INTER_LINEAR)       # bilinear, half-pixel centres
        np.testing.assert_allclose(m, cam / cam.max(), atol=1e-5)


def test_cam_of_negative_evidence_is_empty_and_auto_picks_cam():
    pred = brightness_predictor(weight=-1.0)  # brightness argues against every finding
    imgs = np.full((1, 64, 64), 200, np.uint8)
    assert concrete_method(pred, "auto") == "cam"
    assert explain_batch(pred, imgs, [2], method="auto").max() == 0.0


def test_cam_localises_the_square_and_maps_back_to_the_original_size():
    pred = brightness_predictor(size=64, cell=4)
    img = np.full((90, 180), 60, np.uint8)   # wide: fit_square pads top and bottom
    img[30:54, 120:144] = 240
    out = explain_images(pred, [img], findings=["Mass"])
    heat = out[0]["Mass"]
    assert heat.shape == (90, 180)
    y, x = np.unravel_index(heat.argmax(), heat.shape)
    assert 28 <= y <= 56 and 118 <= x <= 146
    best = boxes_from_heatmap(heat, 0.6)[0]
    assert iobb((120, 30, 24, 24), best) > 0.6
    # explain_batch maps non-preresize images back too
    batch = explain_batch(pred, img[None], [4])
    np.testing.assert_allclose(batch[0], heat, atol=1e-5)


class _TinyBackbone(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                 nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                 nn.Conv2d(16, 16, 3, padding=1), nn.ReLU())

    def forward(self, x):
        return self.net(x)


def test_cam_of_a_trained_model_finds_the_bright_square():
    """Train a tiny CXRModel for 60 steps to say whether a bright square is present; its CAM must point at it."""
    torch.manual_seed(0)
    rng = np.random.default_rng(1)
    model = create_model("resnet10t", 1)
    model.backbone, model.num_features = _TinyBackbone(), 16
    model.head = LinearHead(16, 1)
    pred = Predictor(model, _config(64, n=1, mean=0.3, std=0.2))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(60):
        imgs, _ = square_images(rng, 16)
        has = rng.random(16) < 0.5
        imgs[~has] = rng.normal(70, 8, (int((~has).sum()), 64, 64)).clip(0, 255).astype(np.uint8)
        x = pred.model_input(torch.from_numpy(imgs).unsqueeze(1))
        loss = nn.functional.binary_cross_entropy_with_logits(model(x)[:, 0], torch.from_numpy(has).float())
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    imgs, truth = square_images(np.random.default_rng(7), 8)
    assert (pred.predict(imgs)[:, 0] > 0.5).all()
    maps = explain_batch(pred, imgs, [0] * 8, method="cam")
    hits = 0
    for m, (x, y, w, h) in zip(maps, truth):
        py, px = np.unravel_index(m.argmax(), m.shape)
        hits += (x - 4 <= px < x + w + 4) and (y - 4 <= py < y + h + 4)
    assert hits >= 7, f"CAM peak inside the square on only {hits}/8 images"
    # Grad-CAM on the last feature map of a GAP + linear model is CAM (the gradient is w_c / hw everywhere)
    grad = explain_batch(pred, imgs, [0] * 8, method="gradcam")
    for a, b in zip(maps, grad):
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.99


@pytest.mark.parametrize("arch,size", [("resnet10t", 64), ("densenet121", 64)])
def test_gradcam_runs_on_random_backbones(tmp_path, arch, size):
    torch.manual_seed(0)
    save_bundle(tmp_path / "b", create_model(arch, 14), label_names=NIH_FINDINGS, input_size=size, preresize=size,
                mean=0.449, std=0.226)
    pred = load_bundle(tmp_path / "b")
    assert find_target_layer(pred.model) is pred.model.backbone
    imgs = np.random.default_rng(0).integers(0, 256, (2, size, size), dtype=np.uint8)
    for method in ("gradcam", "gradcam++"):
        maps = explain_batch(pred, imgs, [1, 9], method=method)
        assert maps.shape == (2, size, size) and np.isfinite(maps).all()
        assert maps.min() >= 0 and maps.max() <= 1 and maps.max() > 0
    # the explanation leaves no hooks or gradients behind: plain prediction still works the same
    assert not pred.model.backbone._forward_hooks
    assert all(p.grad is None for p in pred.model.parameters())


def test_attention_head_maps(tmp_path):
    torch.manual_seed(0)
    model = create_model("resnet10t", 14, head="attention")
    save_bundle(tmp_path / "a", model, label_names=NIH_FINDINGS, input_size=64, preresize=64, mean=0.449, std=0.226)
    pred = load_bundle(tmp_path / "a")
    imgs = np.random.default_rng(0).integers(0, 256, (2, 64, 64), dtype=np.uint8)
    assert concrete_method(pred, "auto") == "attention"
    attn = explain_batch(pred, imgs, [0, 3], method="auto")
    with torch.no_grad():
        x = pred.model_input(torch.from_numpy(imgs).unsqueeze(1))
        raw = pred.model.forward_all(x)["attention"][[0, 1], [0, 3]]
    expect = torch.nn.functional.interpolate(raw[:, None], size=(64, 64), mode="bilinear")[:, 0]
    expect = expect / expect.flatten(1).amax(1)[:, None, None]
    np.testing.assert_allclose(attn, expect.numpy(), atol=1e-5)
    for method in ("cam", "gradcam"):
        maps = explain_batch(pred, imgs, [0, 3], method=method)
        assert maps.shape == (2, 64, 64) and 0 <= maps.min() and maps.max() <= 1


def test_explain_errors_are_clear():
    pred = brightness_predictor()
    imgs = np.zeros((2, 64, 64), np.uint8)
    with pytest.raises(ExplainError, match="unknown explanation method"):
        explain_batch(pred, imgs, [0, 1], method="lime")
    with pytest.raises(ExplainError, match="attention-head"):
        resolve_method(pred.model, "attention")
    with pytest.raises(ExplainError, match="out of range"):
        explain_batch(pred, imgs, [0, 14])
    with pytest.raises(ExplainError, match="one finding index per image"):
        explain_batch(pred, imgs, [0])
    with pytest.raises(ExplainError, match="uint8"):
        explain_batch(pred, imgs.astype(np.float32), [0, 1])
    with pytest.raises(ExplainError, match="unknown finding"):
        explain_images(pred, [imgs[0]], findings=["Fracture"])
    assert explain_batch(pred, np.zeros((0, 64, 64), np.uint8), []).shape == (0, 64, 64)


def test_ensemble_maps_are_the_weighted_mean_of_member_maps():
    from cxrkit.bundle.ensemble import EnsemblePredictor

    a, b = brightness_predictor(cell=8), brightness_predictor(cell=4)
    config = {**_config(64), "ensemble": {"method": "weighted", "members": [], "weights": [3.0, 1.0]}}
    ens = EnsemblePredictor([a, b], config)
    imgs = np.random.default_rng(3).integers(0, 256, (2, 64, 64), dtype=np.uint8)
    got = explain_batch(ens, imgs, [0, 6])
    mix = 0.75 * explain_batch(a, imgs, [0, 6]) + 0.25 * explain_batch(b, imgs, [0, 6])
    np.testing.assert_allclose(got, mix / mix.max(axis=(1, 2), keepdims=True), atol=1e-5)
    assert concrete_method(ens) == "cam"


def test_package_exports_and_light_import():
    import subprocess
    import sys

    import cxrkit.explain as ex

    assert ex.explain is explain_images and ex.explain_batch is explain_batch
    code = "import sys, cxrkit.explain.cli, cxrkit.explain; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"  # `cxr --help` must not pay for torch


def test_find_target_layer_on_a_plain_model_skips_the_global_pool():
    conv = nn.Conv2d(4, 6, 3, padding=1)
    act = nn.ReLU()
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), conv, act, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(6, 2))
    assert find_target_layer(model, torch.zeros(1, 1, 16, 16)) is act
    assert not any(m._forward_hooks for m in model.modules())
    with pytest.raises(ExplainError, match="example input"):
        find_target_layer(model)
    with pytest.raises(ExplainError, match="4-D"):
        find_target_layer(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), torch.zeros(1, 4))


@pytest.mark.parametrize("k,h,size", [(1, 7, 160), (3, 40, 64), (600, 5, 32)])
def test_maps_to_the_square_match_torch_bilinear(k, h, size):
    """The OpenCV resize behind every map (up from a feature grid, down from a larger input, more maps than
    OpenCV's 128 channels) equals torch's half-pixel bilinear resize followed by the per-map peak normalisation."""
    import torch.nn.functional as F

    from cxrkit.explain.cam import _to_square

    maps = torch.rand(k, h, h, generator=torch.Generator().manual_seed(k))
    ref = F.interpolate(maps.unsqueeze(1), size=(size, size), mode="bilinear", align_corners=False).squeeze(1)
    ref = (ref / ref.flatten(1).amax(1).view(-1, 1, 1)).clamp(0, 1).numpy()
    for given in (maps, maps.numpy()):
        got = _to_square(given, size)
        assert got.shape == (k, size, size) and got.dtype == np.float32
        np.testing.assert_allclose(got, ref, atol=2e-6)
    assert _to_square(np.zeros((0, 3, 3), np.float32), 8).shape == (0, 8, 8)
