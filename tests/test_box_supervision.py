"""Limited box supervision (cxrkit.training.box_supervision): which films' boxes are used, their masks following
the films through augmentation, the patch loss, and a training run that uses them."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cxrkit.data.errors import CxrError
from cxrkit.training import TrainConfig, train
from cxrkit.training.augment import AugmentSpec, augment
from cxrkit.training.box_supervision import BoxTargets, patch_loss, warp_masks
from cxrkit.training.config import ConfigError


@pytest.fixture(scope="module")
def phantom_cache(tmp_path_factory) -> Path:
    from cxrkit.data.cache import prepare
    from cxrkit.data.phantom import generate

    base = tmp_path_factory.mktemp("boxsup")
    generate(base / "ph", 120, size=64, seed=3, progress=False)
    prepare(base / "ph", base / "cache", size=64, workers=1, progress=False)
    return base / "cache"


def test_the_boxes_of_the_asked_share_of_training_films_are_drawn_from_films_with_boxes(phantom_cache):
    from cxrkit.data.cache import open_cache

    cache = open_cache(phantom_cache)
    train_rows = cache.rows("train")
    with_boxes = set(cache.boxes[cache.boxes["row"].isin(train_rows)]["row"])
    some = BoxTargets.from_cache(cache, train_rows, 0.1, seed=0)
    assert some.n_films == round(0.1 * len(train_rows)) and set(some.boxes) <= with_boxes
    assert some.boxes == BoxTargets.from_cache(cache, train_rows, 0.1, seed=0).boxes  # seeded
    every = BoxTargets.from_cache(cache, train_rows, 1.0, seed=0)
    assert set(every.boxes) == with_boxes  # capped at the films that have boxes
    assert every.n_boxes == int(cache.boxes["row"].isin(train_rows).sum())
    names = list(cache.label_names)
    row, (c, x, y, w, h) = next((r, b[0]) for r, b in every.boxes.items())
    truth = cache.boxes[cache.boxes["row"] == row].iloc[0]
    assert (names[c], x, y, w, h) == (truth["label"], truth["x"], truth["y"], truth["w"], truth["h"])


def test_a_cache_without_boxes_is_refused_with_what_to_do(tmp_path):
    import pandas as pd

    cache = type("C", (), {"label_names": ("Nodule",), "boxes": pd.DataFrame(columns=["row", "label"]),
                           "path": tmp_path, "size": 64})()
    with pytest.raises(CxrError, match="needs ground-truth boxes.*BBox_List_2017"):
        BoxTargets.from_cache(cache, np.arange(10), 0.5, seed=0)


def test_masks_cover_each_box_in_the_models_input_frame():
    targets = BoxTargets({5: ((2, 32.0, 16.0, 8.0, 8.0), (2, 0.0, 0.0, 4.0, 4.0)), 9: ((0, 60.0, 60.0, 40.0, 40.0),)},
                         cache_size=64)
    positions, classes, masks = targets.batch_masks(np.array([9, 7, 5]), size=128)  # masks at 128 / 4 = 32 px
    assert masks.shape == (2, 1, 32, 32)
    pairs = {(int(p), int(c)): m[0] for p, c, m in zip(positions, classes, masks)}
    assert set(pairs) == {(0, 0), (2, 2)}  # batch position, class; row 7 has no boxes
    two = pairs[(2, 2)]  # both boxes of one finding in one mask: x 32-40 -> 16-20, y 16-24 -> 8-12; 0-4 -> 0-2
    assert two[8:12, 16:20].all() and two[0:2, 0:2].all() and two.sum() == 16 + 4
    assert pairs[(0, 0)][30:, 30:].all() and pairs[(0, 0)].sum() == 4  # clipped at the edge
    assert targets.batch_masks(np.array([1, 2]), size=128) is None


def test_masks_move_with_their_films_through_the_augmentation():
    """warp_masks regenerates the step's affine: a film whose pixels are its mask comes out equal to the mask."""
    spec = AugmentSpec(hflip=True, rotate_deg=15.0, translate=0.1, scale=0.1, crop_scale=0.6)
    masks = torch.zeros(4, 1, 32, 32)
    for k in range(4):
        masks[k, 0, 4 + 3 * k:14 + 3 * k, 6 + 2 * k:20 + 2 * k] = 1.0
    films = augment(masks.clone(), spec, seed=11, epoch=2, step=5, rank=0, mean=0.0, std=1.0)
    positions = np.array([3, 1])
    moved = warp_masks(masks[positions], positions, 4, spec, seed=11, epoch=2, step=5, rank=0)
    torch.testing.assert_close(moved, films[positions], atol=1e-5, rtol=0)
    assert not torch.allclose(moved, masks[positions])  # it did move
    other_step = warp_masks(masks[positions], positions, 4, spec, seed=11, epoch=2, step=6, rank=0)
    assert not torch.allclose(other_step, films[positions])
    assert warp_masks(masks, np.arange(4), 4, None, 0, 0, 0, 0) is masks


def test_the_patch_loss_rewards_logits_that_are_high_on_the_box_and_needs_a_linear_head():
    from types import SimpleNamespace

    from cxrkit.models.heads import LinearHead

    model = SimpleNamespace(head=LinearHead(4, 3))  # 4 features, 3 findings
    with torch.no_grad():
        model.head.fc.weight.zero_()
        model.head.fc.weight[1, 0] = 1.0
        model.head.fc.bias.zero_()
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., 4:8, 8:12] = 1.0
    feats = torch.full((2, 4, 4, 4), -3.0)
    feats[1, 0, 1, 2] = 9.0  # film 1, class 1: hot exactly in the box's cell
    right = float(patch_loss(model, feats, np.array([1]), np.array([1]), mask))
    flat = float(patch_loss(model, feats, np.array([0]), np.array([1]), mask))  # film 0 is cold everywhere
    assert right < 0.1 * flat and flat == pytest.approx(np.log(16), abs=1e-4)  # uniform over the 16 cells
    # blind to the level and the scale: the same map shifted (the film's logit) or scaled costs the same
    for changed in (feats[1:2, 0] + 5.0, feats[1:2, 0] * 4.0):
        other = feats.clone()
        other[1, 0] = changed
        assert float(patch_loss(model, other, np.array([1]), np.array([1]), mask)) == pytest.approx(right, abs=1e-5)
    off = torch.zeros_like(mask)  # a box warped off the film: nothing to aim at, no loss, still differentiable
    assert float(patch_loss(model, feats, np.array([1]), np.array([1]), off)) == 0.0
    model.head.fc = None
    with pytest.raises(CxrError, match="linear or LSE head"):
        patch_loss(model, feats, np.array([1]), np.array([1]), mask)


def test_box_supervision_options_are_checked():
    base = dict(cache="c", out="o")
    with pytest.raises(ConfigError, match="box_supervision must be in"):
        TrainConfig(**base, box_supervision=1.5).validate()
    with pytest.raises(ConfigError, match="head 'attention' has none"):
        TrainConfig(**base, box_supervision=0.5, head="attention").validate()
    with pytest.raises(ConfigError, match="box_loss_weight"):
        TrainConfig(**base, box_loss_weight=-1).validate()
    TrainConfig(**base, box_supervision=0.5, head="lse").validate()  # LSE pools the same patch logits
    with pytest.raises(ConfigError, match="lse_r must be > 0"):
        TrainConfig(**base, head="lse", lse_r=0).validate()
    with pytest.raises(ConfigError, match="head must be one of"):
        TrainConfig(**base, head="gap").validate()


def test_a_box_supervised_run_trains_and_records_it(phantom_cache, tmp_path, capsys):
    cfg = TrainConfig(cache=str(phantom_cache), out=str(tmp_path / "run"), arch="cxr_tiny", image_size=64, epochs=1,
                      batch_size=16, num_threads=1, tensorboard=False, export=False, quality_gate=False,
                      box_supervision=0.5, seed=1)
    result = train(cfg)
    assert "box supervision: the boxes of" in capsys.readouterr().out
    import json

    stored = json.loads((Path(result.run_dir) / "config.json").read_text())
    assert stored["box_supervision"] == 0.5
    plain = train(TrainConfig(**{**cfg.to_dict(), "out": str(tmp_path / "plain"), "box_supervision": 0.0}))
    # same seed, same batches: only the box loss differs, so the weights do too
    a = torch.load(Path(result.run_dir) / "checkpoints" / "last.pt", weights_only=False)
    b = torch.load(Path(plain.run_dir) / "checkpoints" / "last.pt", weights_only=False)
    wa, wb = a["trainer"]["model"]["head.fc.weight"], b["trainer"]["model"]["head.fc.weight"]
    assert not torch.allclose(wa, wb)
