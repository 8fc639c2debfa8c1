"""Unit tests of the training engine's parts: config, loss, augmentation, thresholds, checkpoints."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from cxrkit.data.errors import CxrError
from cxrkit.training.augment import AugmentSpec, affine_params, augment, augment_batch, step_generator
from cxrkit.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from cxrkit.training.config import ConfigError, TrainConfig, check_resume_compatible, resolve_config
from cxrkit.training.losses import abnormal_target, masked_bce, prevalence_pos_weight
from cxrkit.training.thresholds import mean_auroc, per_class_auroc, youden_thresholds

torch.set_num_threads(1)


def test_chexnet_defaults():
    cfg = TrainConfig(cache="c", out="o").validate()
    assert (cfg.arch, cfg.image_size, cfg.lr, cfg.betas, cfg.lr_factor, cfg.lr_patience, cfg.select) == (
        "densenet121", 224, 1e-3, (0.9, 0.999), 0.1, 1, "auroc")
    assert cfg.pos_weight and cfg.augment and cfg.hflip


def test_demo_preset_and_cosine_schedule():
    from cxrkit.training.trainer import Trainer

    cfg = TrainConfig.demo_preset(cache="c", out="o", epochs=4).validate()
    assert (cfg.arch, cfg.image_size, cfg.lr_schedule, cfg.epochs) == ("cxr_tiny", 160, "cosine", 4)
    trainer = Trainer(cfg, 14, None, torch.device("cpu"))
    lrs = []
    for step in (0, 50, 100, 200):
        trainer.cosine_lr(step, 100)
        lrs.append(trainer.lr())
    assert lrs[0] == pytest.approx(1e-3) and lrs[1] == pytest.approx(0.505e-3) and lrs[2] == lrs[3] == pytest.approx(1e-5)
    with pytest.raises(ConfigError, match="lr_schedule"):
        TrainConfig(cache="c", out="o", lr_schedule="step").validate()


def test_config_file_toml_json_and_overrides(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('[train]\narch = "resnet10t"\nepochs = 3\nbetas = [0.8, 0.99]\nlr = 0.01\n')
    cfg = resolve_config(toml, cache="c", out="o", epochs=7, lr=None)
    assert (cfg.arch, cfg.epochs, cfg.lr, cfg.betas) == ("resnet10t", 7, 0.01, (0.8, 0.99))
    js = tmp_path / "c.json"
    js.write_text(json.dumps({"preset": "cpu-demo", "epochs": 2}))
    demo = resolve_config(js, cache="c", out="o")
    assert demo.arch == TrainConfig.demo_preset().arch and demo.epochs == 2 and demo.preset == "cpu-demo"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"learning_rate": 1}))
    with pytest.raises(ConfigError, match="learning_rate"):
        resolve_config(bad, cache="c", out="o")
    with pytest.raises(ConfigError, match="precision"):
        resolve_config(None, cache="c", out="o", precision="fp8")
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_config(tmp_path / "nope.toml", cache="c", out="o")


def test_resume_config_only_changes_harmless_keys():
    stored = TrainConfig(cache="c", out="o", epochs=2).validate().to_dict()
    cfg = check_resume_compatible(stored, {"epochs": 5, "arch": "densenet121", "quiet": True})
    assert cfg.epochs == 5 and cfg.resume and cfg.quiet
    with pytest.raises(ConfigError, match="lr"):
        check_resume_compatible(stored, {"lr": 0.5})


def test_pos_weight_is_neg_over_pos_ignoring_unknown():
    y = np.array([[1, 0, np.nan], [0, 0, 1], [0, np.nan, 0], [0, 0, np.nan]], dtype=np.float32)
    w = prevalence_pos_weight(y)
    np.testing.assert_allclose(w, [3.0, 1.0, 1.0])  # col 1 has no positive -> 1; col 2: 1 neg / 1 pos


def test_masked_bce_ignores_nan_and_matches_torch():
    logits = torch.tensor([[0.3, -1.0], [2.0, 0.5]])
    y = torch.tensor([[1.0, float("nan")], [0.0, 1.0]])
    pw = torch.tensor([2.0, 3.0])
    got = masked_bce(logits, y, pw)
    ref = torch.nn.functional.binary_cross_entropy_with_logits(
        torch.tensor([0.3, 2.0, 0.5]), torch.tensor([1.0, 0.0, 1.0]), pos_weight=torch.tensor([2.0, 2.0, 3.0]))
    assert torch.isclose(got, ref)
    # unknown labels carry no gradient
    logits.requires_grad_(True)
    masked_bce(logits, y, pw).backward()
    assert logits.grad[0, 1] == 0 and logits.grad[0, 0] != 0


def test_abnormal_target():
    y = torch.tensor([[0.0, 1.0], [0.0, 0.0], [0.0, float("nan")], [float("nan"), 1.0]])
    t = abnormal_target(y)
    assert t[0] == 1 and t[1] == 0 and math.isnan(t[2]) and t[3] == 1


def test_augment_is_deterministic_per_step_and_keeps_black_fill():
    x = torch.randn(4, 1, 32, 32)
    spec = AugmentSpec(hflip=True, rotate_deg=10, translate=0.1, scale=0.1)
    a = augment(x, spec, seed=1, epoch=2, step=3, rank=0, mean=0.449, std=0.226)
    b = augment(x, spec, seed=1, epoch=2, step=3, rank=0, mean=0.449, std=0.226)
    c = augment(x, spec, seed=1, epoch=2, step=4, rank=0, mean=0.449, std=0.226)
    assert torch.equal(a, b) and not torch.equal(a, c)
    # a shift brings in black: normalised (0 - mean) / std, like fit_square's padding
    shift = torch.tensor([[[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]])
    out = augment_batch(torch.zeros(1, 1, 8, 8), shift, fill=-2.0)
    assert torch.allclose(out[..., -2:], torch.tensor(-2.0)) and torch.allclose(out[..., :2], torch.tensor(0.0))
    # global RNG untouched
    state = torch.get_rng_state()
    augment(x, spec, 0, 0, 0, 0, 0.449, 0.226)
    assert torch.equal(state, torch.get_rng_state())


def test_flip_only_mirrors_exactly():
    x = torch.arange(2 * 16 * 16, dtype=torch.float32).reshape(2, 1, 16, 16)
    spec = AugmentSpec(hflip=True, rotate_deg=0, translate=0, scale=0)
    theta = affine_params(2, spec, step_generator(0, 0, 0))
    out = augment_batch(x, theta, fill=0.0)
    for i in range(2):
        flipped = bool(theta[i, 0, 0] < 0)
        expect = x[i].flip(-1) if flipped else x[i]
        assert torch.allclose(out[i], expect, atol=1e-3)
    assert AugmentSpec(False, 0, 0, 0).is_identity


def test_auroc_and_youden_thresholds():
    y = np.array([[0, 1], [0, 1], [1, 1], [1, 1], [np.nan, 1]], dtype=np.float32)
    p = np.array([[0.1, 0.5], [0.2, 0.5], [0.7, 0.5], [0.9, 0.5], [0.5, 0.5]], dtype=np.float32)
    aucs = per_class_auroc(y, p, ["a", "b"])
    assert aucs == {"a": 1.0, "b": None} and mean_auroc(aucs) == 1.0
    thr = youden_thresholds(y, p, ["a", "b"])
    assert 0.2 < thr["a"] <= 0.7 and thr["b"] == 0.5


def test_checkpoint_roundtrip_and_refusals(tmp_path):
    path = tmp_path / "ck" / "last.pt"
    save_checkpoint(path, {"w": torch.ones(3), "epoch": 2, "hist": [{"a": 1.0, "b": None}]})
    back = load_checkpoint(path)
    assert torch.equal(back["w"], torch.ones(3)) and back["hist"][0]["b"] is None
    assert not list(path.parent.glob(".*"))  # no temp file left behind
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")

    from fractions import Fraction  # any pickled object beyond plain data must be refused (weights_only)

    torch.save({"x": Fraction(1, 3)}, tmp_path / "evil.pt")
    with pytest.raises(CxrError, match="could not read"):
        load_checkpoint(tmp_path / "evil.pt")
