"""The few-label recipe: preset resolution, frozen backbones stay frozen (BatchNorm statistics too), the EMA weights
are what is validated and shipped, warm-up + cosine, radiograph augmentation, a bundle fine-tuned to a new label set
from a CSV in one command, and `cxr learning-curve` on tiny data (figure, nested subsets, resume)."""
from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
from test_training import make_tiny_nih

from cxrkit.training import TrainConfig, train
from cxrkit.training.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    from cxrkit.data.cache import prepare

    base = tmp_path_factory.mktemp("small")
    prepare(make_tiny_nih(base / "nih", n=80, size=40), base / "cache", size=40, workers=1, progress=False)
    return base / "cache"


def _cfg(cache, out, **kw) -> TrainConfig:
    args = dict(cache=str(cache), out=str(out), arch="cxr_tiny", image_size=32, epochs=1, batch_size=16,
                max_steps_per_epoch=3, num_threads=1, quiet=True, tensorboard=False, quality_gate=False,
                precision="fp32", channels_last=False, export=False)
    args.update(kw)
    return TrainConfig(**args)


def _init_state(cfg: TrainConfig, n: int) -> dict:
    from cxrkit.training.trainer import build_model

    return {k: v.clone() for k, v in build_model(cfg, n).state_dict().items()}


def test_small_data_preset_resolves_and_explicit_settings_win():
    cfg = TrainConfig.from_dict({"preset": "small-data", "cache": "c", "out": "o", "epochs": 7}).validate()
    assert (cfg.select, cfg.hflip, cfg.lr_schedule, cfg.epochs, cfg.preset) == ("last", False, "cosine", 7,
                                                                                "small-data")
    assert cfg.ema_decay and cfg.crop_scale > 0 and cfg.gamma > 0 and cfg.warmup_epochs > 0
    from cxrkit.training.config import ConfigError

    with pytest.raises(ConfigError, match="freeze must be one of"):
        TrainConfig(cache="c", out="o", freeze="half").validate()
    with pytest.raises(ConfigError, match="unknown preset"):
        TrainConfig.from_dict({"preset": "tiny-data", "cache": "c", "out": "o"})


@pytest.mark.parametrize("mode", ["linear-probe", "partial"])
def test_frozen_backbone_parameters_and_statistics_do_not_move(cache, tmp_path, mode):
    cfg = _cfg(cache, tmp_path / mode, freeze=mode)
    before = _init_state(cfg, 14)
    result = train(cfg)
    after = load_file(str(result.bundle_dir / "model.safetensors"))
    from cxrkit.training.freeze import frozen_parameter_names
    from cxrkit.training.trainer import build_model

    backbone = build_model(cfg, 14).backbone
    frozen = {f"backbone.{n}" for n in frozen_parameter_names(backbone, mode)}
    names = [f"backbone.{n}" for n, _ in backbone.named_parameters()]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)
    # the BatchNorm layers inside the frozen part keep their running statistics
    frozen_bn = {k.rsplit(".", 1)[0] for k in frozen if k.endswith(".bias")}
    stats = [k for k in before if k.endswith("running_mean") and k.rsplit(".", 1)[0] in frozen_bn]
    assert stats and all(torch.equal(before[k], after[k]) for k in stats)
    assert not torch.equal(before["head.fc.weight"], after["head.fc.weight"])
    trainable = [k for k in names if k not in frozen]
    if mode == "partial":
        assert trainable and any(not torch.equal(before[k], after[k]) for k in trainable)
        assert len(frozen) < len(names)
    else:
        assert not trainable


def test_ema_weights_are_validated_and_shipped_with_select_last(cache, tmp_path):
    result = train(_cfg(cache, tmp_path / "ema", epochs=2, ema_decay=0.9, select="last", early_stop_patience=1))
    state = load_checkpoint(result.run_dir / "checkpoints" / "last.pt")["trainer"]
    shipped = load_file(str(result.bundle_dir / "model.safetensors"))
    ema, raw = state["ema"]["module"], state["model"]
    assert all(torch.equal(shipped[k], ema[k]) for k in shipped)
    assert any(not torch.equal(ema[k], raw[k]) for k in raw if k.endswith("weight"))
    config = json.loads((result.bundle_dir / "config.json").read_text())
    assert config["metrics"]["epoch"] == 1 and result.epochs_run == 2  # the last epoch, no early stop


def test_warmup_then_cosine(cache, tmp_path):
    from cxrkit.training.trainer import Trainer

    t = Trainer(_cfg(cache, tmp_path / "lr", lr=0.1), 14, None, torch.device("cpu"))
    lrs = []
    for step in (0, 4, 5, 50, 100):
        t.cosine_lr(step, 100, warmup=5)
        lrs.append(t.lr())
    assert lrs[0] == pytest.approx(0.02) and lrs[1] == pytest.approx(0.1) and lrs[2] == pytest.approx(0.1)
    assert lrs[3] < 0.06 and lrs[4] == pytest.approx(0.001)


def test_radiograph_augmentation_is_seeded_bounded_and_never_flips():
    from cxrkit.evaluation.tta import tta_batches
    from cxrkit.training.augment import AugmentSpec, augment

    spec = AugmentSpec(hflip=False, rotate_deg=5, translate=0, scale=0, crop_scale=0.6, gamma=0.3, contrast=0.3,
                       noise=0.05)
    x01 = torch.zeros(16, 1, 48, 48)
    x01[..., :24] = 0.8  # bright left half: no view may swap the sides
    mean, std = 0.449, 0.226
    x = (x01 - mean) / std
    a, b = augment(x, spec, 3, 1, 2, 0, mean, std), augment(x, spec, 3, 1, 2, 0, mean, std)
    assert torch.equal(a, b) and not torch.equal(a, augment(x, spec, 3, 1, 3, 0, mean, std))
    pix = a * std + mean
    assert pix.min() >= -1e-5 and pix.max() <= 1 + 1e-5
    assert (pix[..., :16].mean(dim=(1, 2, 3)) > pix[..., 32:].mean(dim=(1, 2, 3))).all()
    views = tta_batches((x01 * 255).to(torch.uint8))
    assert len(views) == 4 and all(v.dtype == torch.uint8 and v.shape == (16, 1, 48, 48) for v in views)
    assert all((v[..., :16].float().mean() > v[..., 32:].float().mean()) for v in views)


def test_bundle_fine_tuned_to_a_new_label_set_from_a_csv_in_one_command(tmp_path, make_tiny_bundle, capsys):
    from cxrkit.cli import main
    from cxrkit.data.cache import prepare

    rng = np.random.default_rng(1)
    (tmp_path / "films").mkdir()
    rows = []
    for i in range(48):
        img = rng.normal(90, 15, (40, 40)).clip(0, 255)
        abnormal = i % 2
        if abnormal:
            cv2.circle(img, (20, 20), 6, 230, -1)
        cv2.imwrite(str(tmp_path / "films" / f"{i}.png"), img.astype(np.uint8))
        rows.append({"path": f"films/{i}.png", "patient_id": f"p{i}", "Abnormal": abnormal})
    pd.DataFrame(rows).to_csv(tmp_path / "labels.csv", index=False)
    prepare(tmp_path / "labels.csv", tmp_path / "cache", size=40, workers=1, progress=False)
    bundle = make_tiny_bundle(tmp_path / "old", arch="cxr_tiny", size=32)
    # no --arch: the bundle names it; a new head for the new label set
    main(["train", str(tmp_path / "cache"), "--out", str(tmp_path / "run"), "--pretrained", str(bundle),
          "--preset", "small-data", "--epochs", "1", "--size", "32", "--batch-size", "16", "--quiet",
          "--no-tensorboard", "--no-quality-gate", "--no-export", "--num-threads", "1"])
    assert "bundle:" in capsys.readouterr().out
    config = json.loads((tmp_path / "run" / "bundle" / "config.json").read_text())
    assert config["label_names"] == ["Abnormal"] and config["model"]["arch"] == "cxr_tiny"
    assert config["provenance"]["train_config"]["pretrained"] == str(bundle)


def test_learning_curve_on_tiny_data(cache, tmp_path):
    from cxrkit.training.curve import CurveSpec, learning_curve

    spec = CurveSpec(cache=str(cache), out=str(tmp_path / "lc"), fractions=[0.5, 1.0], folds=2, n_boot=50,
                     train=dict(arch="cxr_tiny", image_size=32, epochs=1, batch_size=16, num_threads=1,
                                max_steps_per_epoch=2, precision="fp32"))
    lines = []
    report = learning_curve(spec, progress=lines.append)
    assert len(lines) == 4 and "fold 2/2" in lines[-1]
    res = {r["fraction"]: r for r in report["results"]}
    assert res[0.5]["n_train"] < res[1.0]["n_train"] and res[1.0]["n_test"] == 80  # every film scored once
    assert all(r["ci_low"] <= r["mean_auroc"] <= r["ci_high"] for r in res.values())
    out = tmp_path / "lc"
    assert (out / "learning_curve.png").stat().st_size > 5000 and (out / "learning_curve.csv").is_file()
    # patient-level folds: no patient in two folds' test sets, none in both train and test of a fold
    from cxrkit.data.cache import open_cache

    tests = []
    for k in range(2):
        view = open_cache(out / "views" / f"fold{k}" / "f1")
        split = view.index.set_index("patient_id")["split"]
        assert not set(split[split == "test"].index) & set(split[split == "train"].index)
        tests.append(set(split[split == "test"].index))
    assert not tests[0] & tests[1]
    # a second call with one more recipe reuses the finished runs
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/fold*/f*/bundle/model.safetensors")}
    spec.presets = ["chexnet", "small-data"]
    learning_curve(spec, progress=lines.append)
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items()) and len(stamps) == 4
    results = json.loads((out / "learning_curve.json").read_text())["results"]
    assert len(results) == 4
    # each recipe against the first one, paired on the same films and bootstrap draws
    by = {(r["recipe"], r["fraction"]): r for r in results}
    for f in (0.5, 1.0):
        ref, other = by[("chexnet+random", f)], by[("small-data+random", f)]
        assert ref["vs_reference"] is None
        vs = other["vs_reference"]
        assert vs["reference"] == "chexnet+random"
        assert vs["diff"] == pytest.approx(other["mean_auroc"] - ref["mean_auroc"])
        assert vs["ci_low"] <= vs["diff"] <= vs["ci_high"] and 0 <= vs["p_value"] <= 1


def test_learning_curve_ensemble_is_scored_beside_its_first_member(cache, tmp_path):
    from cxrkit.data.cache import open_cache
    from cxrkit.training.curve import CurveError, CurveSpec, learning_curve

    train = dict(arch="cxr_tiny", image_size=32, epochs=1, batch_size=16, num_threads=1, max_steps_per_epoch=2,
                 precision="fp32")
    out = tmp_path / "lc"
    single = learning_curve(CurveSpec(cache=str(cache), out=str(out), fractions=[1.0], folds=2, n_boot=50,
                                      train=train), progress=lambda _: None)["results"]
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/fold*/f1/bundle/model.safetensors")}
    lines = []
    report = learning_curve(CurveSpec(cache=str(cache), out=str(out), fractions=[1.0], folds=2, n_boot=50,
                                      ensemble=3, train=train), progress=lines.append)
    # member 0 is the single-model run, reused; members 1-2 are new runs with other seeds
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items()) and len(stamps) == 2
    members = sorted(out.glob("runs/*/fold0/f1*/bundle/model.safetensors"))
    assert len(members) == 3
    weights = [p.read_bytes() for p in members]
    assert len(set(weights)) == 3  # different seeds, different models
    assert len(lines) == 2 * 3 + 2 and "member 3/3" in lines[2] and "3-model ensemble, fold 2/2" in lines[-1]
    by = {r["recipe"]: r for r in report["results"]}
    ref, ens = by["chexnet+random"], by["chexnet+random, 3-model ensemble"]
    assert ref["mean_auroc"] == pytest.approx(single[0]["mean_auroc"]) and ref["models"] == 1
    assert ens["models"] == 3 and ens["vs_reference"]["reference"] == "chexnet+random"
    assert ens["train_s_per_run"] > ref["train_s_per_run"]
    # the ensemble's score is the mean of its members' probabilities, pooled out of fold
    from cxrkit.bundle import load_bundle
    from cxrkit.evaluation.predict import predict_rows
    from cxrkit.evaluation.bootstrap import ClusterBootstrap
    from cxrkit.evaluation.summary import ranking_summary

    c = open_cache(out / "views" / "fold0" / "f1")
    rows = c.rows("test")
    probs = np.mean([predict_rows(load_bundle(p.parent), c, rows, progress=False)["probs"] for p in members], axis=0)
    fold0, _ = ranking_summary(c.labels(rows).astype(np.float64), probs, list(c.label_names),
                               ClusterBootstrap.draw(c.index["patient_id"].astype(str).to_numpy()[rows], 0))
    assert ens["fold_mean_auroc"][0] == pytest.approx(fold0["mean_auroc"], abs=1e-6)
    with pytest.raises(CurveError, match="--ensemble"):
        CurveSpec(cache=str(cache), out=str(out), ensemble=0).validate()


def test_tta_predictor_averages_the_views(cache, tmp_path, make_tiny_bundle):
    from cxrkit.bundle import load_bundle
    from cxrkit.data.cache import open_cache
    from cxrkit.evaluation.predict import predict_rows
    from cxrkit.evaluation.tta import TTAPredictor, tta_batches

    pred = load_bundle(make_tiny_bundle(tmp_path / "b", arch="cxr_tiny", size=32))
    c = open_cache(cache)
    rows = c.rows("test")[:8]
    tta = predict_rows(TTAPredictor(pred), c, rows, progress=False)["probs"]
    batch = torch.from_numpy(np.ascontiguousarray(c.images[np.sort(rows)])).unsqueeze(1)
    views = [pred.forward_uint8(v)["probs"] for v in tta_batches(batch)]
    order = np.argsort(np.argsort(rows))
    assert np.allclose(tta, np.mean(views, axis=0)[order], atol=1e-6)
    assert not np.allclose(tta, views[0][order])
    assert TTAPredictor(pred).label_names == pred.label_names


def test_curve_figure_with_one_label_budget_is_a_dot_plot(tmp_path):
    from cxrkit.training.curve_figure import curve_figure

    results = [{"recipe": n, "fraction": 1.0, "n_labelled": 337.0, "n_test": 421, "mean_auroc": m, "ci_low": m - 0.03,
                "ci_high": m + 0.03} for n, m in (("chexnet+random", 0.59), ("small-data+random", 0.6))]
    path = curve_figure({"folds": 5, "results": results}, tmp_path / "dots.png")
    assert path.stat().st_size > 5000
