"""`cxr tune`: search-space validation, a tiny real study (trials are run folders with bundles), resume, pruning,
seed reproducibility, the grid, and the report. Tiny cache, cxr_tiny at 32 px, 1-2 epochs per trial."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

optuna = pytest.importorskip("optuna")

from cxrkit.tuning.space import SpaceError, parse_space  # noqa: E402
from cxrkit.tuning.study import TuneSpec, run_study  # noqa: E402

FIXED = {"arch": "cxr_tiny", "image_size": 32, "epochs": 2, "batch_size": 16, "num_threads": 1,
         "deterministic": True, "tensorboard": False, "augment": False, "early_stop_patience": None,
         "export": False, "quality_gate": False}  # export and the gate fit: most of a tiny trial's time


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    from cxrkit.data.cache import prepare
    from test_training import make_tiny_nih

    base = tmp_path_factory.mktemp("tune")
    src = make_tiny_nih(base / "nih", n=120, size=32)
    prepare(src, base / "cache", size=32, workers=1, progress=False)
    return base / "cache"


def _space(params: dict, study: dict | None = None, **fixed):
    fixed = {k: v for k, v in {**FIXED, **fixed}.items() if k not in params}
    return parse_space({"study": study or {"pruner": "none"}, "fixed": fixed, "params": params})


def _trials(study):
    return sorted(study.trials, key=lambda t: t.number)


# -- the space file ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("params, fixed, message", [
    ({"lrr": {"type": "float", "low": 1e-4, "high": 1e-2}}, {}, "unknown TrainConfig keys ['lrr']"),
    ({"lr": {"type": "float", "low": 1e-2, "high": 1e-4}}, {}, "must be below high"),
    ({"lr": {"type": "float", "low": 0.0, "high": 1e-2, "log": True}}, {}, "log range needs low > 0"),
    ({"lr": {"type": "gauss", "low": 0.1, "high": 1}}, {}, "type must be one of"),
    ({"lr": {"type": "float", "low": 1e-4}}, {}, "needs a numeric `high`"),
    ({"head": {"type": "categorical", "choices": []}}, {}, "non-empty `choices`"),
    ({"precision": ["fp32", "fp8"]}, {}, "precision must be one of"),
    ({"lr": [1e-3]}, {"lr": 1e-3}, "both fixed and searched"),
    ({"lr": [1e-3]}, {"out": "x"}, "sets ['out']"),
    ({"batch_size": {"type": "int", "low": 0, "high": 8}}, {}, "batch_size must be >= 1"),
])
def test_bad_space_is_refused(params, fixed, message):
    with pytest.raises(SpaceError) as exc:
        parse_space({"fixed": fixed, "params": params})
    assert message in str(exc.value)


def test_grid_needs_finite_values():
    space = parse_space({"params": {"lr": {"type": "float", "low": 1e-4, "high": 1e-2, "grid": [1e-4, 1e-3]},
                                    "head": ["linear", "attention"], "batch_size": {"type": "int", "low": 8,
                                                                                     "high": 32, "step": 8}}})
    assert space.grid() == {"lr": [1e-4, 1e-3], "head": ["linear", "attention"], "batch_size": [8, 16, 24, 32]}
    assert space.grid_size() == 16
    with pytest.raises(SpaceError, match="no finite grid"):
        parse_space({"params": {"lr": {"type": "float", "low": 1e-4, "high": 1e-2}}}).grid()


def test_bad_space_file_exits_2_through_the_cli(tmp_path, cache):
    bad = tmp_path / "space.toml"
    bad.write_text('[params]\nlearning_rate = {type = "float", low = 1e-4, high = 1e-2, log = true}\n')
    proc = subprocess.run([sys.executable, "-m", "cxrkit.cli", "tune", str(cache), "--space", str(bad), "--trials",
                           "2", "--out", str(tmp_path / "study")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "unknown TrainConfig keys ['learning_rate']" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_missing_cache_fails_before_any_trial(tmp_path):
    from cxrkit.data.errors import CacheError

    spec = TuneSpec(cache=str(tmp_path / "nope"), space=_space(SEARCH), out=str(tmp_path / "s"), trials=3)
    with pytest.raises(CacheError):
        run_study(spec)
    assert not (tmp_path / "s" / "study.db").exists()


# -- a real study ----------------------------------------------------------------------------------------------
SEARCH = {"lr": {"type": "float", "low": 1e-3, "high": 3e-2, "log": True}, "head": ["linear", "attention"]}


def test_study_runs_trials_as_run_folders_and_resumes(tmp_path, cache):
    spec = TuneSpec(cache=str(cache), space=_space(SEARCH), out=str(tmp_path / "s"), trials=2, seed=3)
    study = run_study(spec)
    trials = _trials(study)
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    for t in trials:
        run = tmp_path / "s" / t.user_attrs["run_dir"]
        cfg = json.loads((run / "config.json").read_text())
        assert cfg["lr"] == pytest.approx(t.params["lr"]) and cfg["head"] == t.params["head"]
        assert (tmp_path / "s" / t.user_attrs["bundle"] / "model.safetensors").is_file()
        history = [json.loads(x) for x in (run / "history.jsonl").read_text().splitlines()]
        assert t.value == pytest.approx(max(h["val_mean_auroc"] for h in history))
    first = [(t.number, t.params) for t in trials]

    # a rerun asking for 3 finished trials adds exactly one and leaves the first two as they were
    again = _trials(run_study(TuneSpec(cache=str(cache), space=_space(SEARCH), out=str(tmp_path / "s"), trials=3,
                                       seed=3)))
    assert len(again) == 3 and [(t.number, t.params) for t in again[:2]] == first
    assert again[2].params != again[0].params and again[2].params != again[1].params
    assert sorted(p.name for p in (tmp_path / "s" / "trials").iterdir()) == ["0000", "0001", "0002"]
    # nothing left to do: a rerun with the same target runs no trial
    assert len(run_study(TuneSpec(cache=str(cache), space=_space(SEARCH), out=str(tmp_path / "s"), trials=3,
                                  seed=3)).trials) == 3

    # a changed space on the same study is refused
    with pytest.raises(SpaceError, match="different search space"):
        run_study(TuneSpec(cache=str(cache), space=_space({"lr": [1e-3, 1e-2]}), out=str(tmp_path / "s"), trials=4))

    # the report
    from cxrkit.tuning.report import write_report

    summary = write_report(tmp_path / "s")
    best = max(again, key=lambda t: t.value)
    assert summary["best_trial"] == best.number and summary["value"] == pytest.approx(best.value)
    from cxrkit.bundle import load_bundle

    assert load_bundle(summary["bundle"]) is not None  # the best trial's bundle is a real, loadable bundle
    assert json.loads((tmp_path / "s" / "best.json").read_text())["best_trial"] == best.number
    page = (tmp_path / "s" / "report.html").read_text()
    assert "Optimisation history" in page and "Learning curves per trial" in page and "plotly" in page.lower()
    assert "<table" in page and "Research use only" in page
    assert (tmp_path / "s" / "best_bundle" / "model.safetensors").read_bytes() == \
        (Path(summary["bundle"]) / "model.safetensors").read_bytes()
    for name in ("Parameter importances", "Slice plot", "Parallel coordinates", "Intermediate values"):
        assert name in page

    # `cxr ensemble --from-tune DIR --top-k 2`: the two best complete trials, best first
    from cxrkit.cli import main

    main(["ensemble", "--from-tune", str(tmp_path / "s"), "--top-k", "2", "--out", str(tmp_path / "ens"), "--quiet"])
    top2 = sorted(again, key=lambda t: -t.value)[:2]
    for i, t in enumerate(top2):
        assert (tmp_path / "ens" / "members" / str(i) / "model.safetensors").read_bytes() == \
            (tmp_path / "s" / t.user_attrs["bundle"] / "model.safetensors").read_bytes()
    with pytest.raises(SystemExit) as exc:  # more members than complete trials: a usage error, exit 2
        main(["ensemble", "--from-tune", str(tmp_path / "s"), "--top-k", "4", "--out", str(tmp_path / "e4")])
    assert exc.value.code == 2


def test_sampled_params_are_reproducible_from_the_seed(tmp_path):
    """Same seed -> same parameter sequence; another seed -> another one (sampling only: a constant objective)."""
    from cxrkit.tuning.study import open_study

    def params(seed: int, name: str):
        spec = TuneSpec(cache="unused", space=_space(SEARCH), out=str(tmp_path / name), trials=4, seed=seed)
        Path(spec.out).mkdir()
        study = open_study(spec)
        study.optimize(lambda t: [p.suggest(t) for p in spec.space.params] and 0.5, n_trials=4)
        return [t.params for t in _trials(study)]

    first = params(7, "a")
    assert params(7, "b") == first
    assert params(8, "c") != first


def test_pruning_stops_an_obviously_bad_trial(tmp_path, cache):
    """lr 1e-9 leaves the model at its init, far below a trained one: the median pruner (1 startup trial, no
    warm-up) stops it after its first epoch, and the pruned trial still is a run folder with a bundle."""
    space = _space({"lr": [3e-2, 1e-9]}, study={"pruner": "median", "pruner_startup_trials": 1,
                                                  "pruner_warmup_epochs": 0}, epochs=2)
    spec = TuneSpec(cache=str(cache), space=space, out=str(tmp_path / "p"), trials=2, seed=0,
                    enqueue=({"lr": 3e-2}, {"lr": 1e-9}))
    trials = _trials(run_study(spec))
    assert [t.params["lr"] for t in trials] == [3e-2, 1e-9]
    assert [t.state.name for t in trials] == ["COMPLETE", "PRUNED"]
    assert trials[1].user_attrs["epochs_run"] == 1 and trials[1].user_attrs["pruned_after_epoch"] == 0
    assert (tmp_path / "p" / trials[1].user_attrs["bundle"] / "model.safetensors").is_file()


def test_grid_runs_every_point_once_through_the_cli(tmp_path, cache):
    space_file = tmp_path / "grid.toml"
    space_file.write_text("""
[study]
pruner = "none"
[fixed]
arch = "cxr_tiny"
image_size = 32
epochs = 1
batch_size = 16
num_threads = 1
tensorboard = false
quality_gate = false
[params]
head = ["attention"]
lr = {type = "float", low = 1e-3, high = 1e-2, log = true, grid = [1e-3, 1e-2]}
""")
    from cxrkit.cli import main

    out = tmp_path / "g"
    main(["tune", str(cache), "--space", str(space_file), "--out", str(out), "--grid"])
    rows = [json.loads((p / "config.json").read_text()) for p in sorted((out / "trials").iterdir())]
    assert sorted((r["head"], r["lr"]) for r in rows) == sorted(
        ("attention", lr) for lr in (1e-3, 1e-2))
    # a rerun of the finished grid adds nothing
    main(["tune", str(cache), "--space", str(space_file), "--out", str(out), "--grid"])
    assert len(list((out / "trials").iterdir())) == 2
    main(["tune", "report", str(out)])
    assert (out / "best.json").is_file() and (out / "report.html").is_file()


def test_train_on_epoch_hook_sees_each_record_and_can_stop(tmp_path, cache):
    """The engine hook `cxr tune` prunes through: it gets the history line of each epoch, and True stops the run
    after that epoch with the usual bundle; without it the run goes on (the default path is unchanged)."""
    from cxrkit.training import TrainConfig, train

    seen: list[dict] = []

    def hook(record: dict) -> bool:
        seen.append(record)
        return record["epoch"] == 0

    cfg = TrainConfig(cache=str(cache), out=str(tmp_path / "run"), **{**FIXED, "epochs": 3})
    result = train(cfg, on_epoch=hook)
    assert result.epochs_run == 1 and result.stopped_early and result.bundle_dir is not None
    history = [json.loads(x) for x in result.history.read_text().splitlines()]
    assert [r["epoch"] for r in seen] == [0]
    assert seen[0]["val_mean_auroc"] == pytest.approx(history[0]["val_mean_auroc"])
    assert (result.bundle_dir / "model.safetensors").is_file()


def test_optimizer_and_input_channel_keys_searched_by_the_seed_study(tmp_path, cache):
    """`optimizer` picks the torch optimiser; `input_channels = 3` trains a 3-channel stem on the grey film copied to
    RGB inside the model, so its bundle still takes one-channel input; bad values are refused."""
    import torch

    from cxrkit.bundle import load_bundle
    from cxrkit.training import TrainConfig, train
    from cxrkit.training.config import ConfigError
    from cxrkit.training.trainer import make_optimizer

    params = [torch.nn.Parameter(torch.zeros(2))]
    kinds = {name: type(make_optimizer(TrainConfig(cache="c", out="o", optimizer=name), params, torch.device("cpu")))
             for name in ("adam", "adamw", "sgd", "rmsprop")}
    assert kinds == {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD,
                     "rmsprop": torch.optim.RMSprop}
    for bad in ({"optimizer": "lion"}, {"input_channels": 2}, {"input_channels": 3, "pretrained": "x.pth"}):
        with pytest.raises(ConfigError):
            TrainConfig(cache="c", out="o", **bad).validate()

    result = train(TrainConfig(cache=str(cache), out=str(tmp_path / "rgb"), input_channels=3, optimizer="sgd",
                               lr=1e-2, **{**FIXED, "epochs": 1}))
    predictor = load_bundle(result.bundle_dir)
    first_conv = next(m for m in predictor.model.backbone.modules() if isinstance(m, torch.nn.Conv2d))
    assert first_conv.in_channels == 3
    probs = predictor.predict([np.zeros((32, 32), np.uint8)])
    assert np.all((probs >= 0) & (probs <= 1))


# -- tied keys: batch size x accumulation at a fixed effective batch; loss-weighting strength -----------------
@pytest.mark.parametrize("study, params, fixed, message", [
    ({"effective_batch": 32}, {"batch_size": [8, 12]}, {}, "not a whole multiple of batch_size [12]"),
    ({"effective_batch": 32}, {"batch_size": {"type": "int", "low": 8, "high": 10}}, {}, "[9, 10]"),
    ({"effective_batch": 32}, {"batch_size": [8, 16]}, {"accum_steps": 2}, "remove accum_steps"),
    ({"effective_batch": 0}, {"batch_size": [8]}, {}, "effective_batch must be an integer >= 1"),
    ({"effective_batch": 32}, {"lr": [1e-3]}, {"batch_size": 24}, "[24]"),
    ({}, {"pos_weight_power": {"type": "float", "low": 0.0, "high": 3.0}}, {}, "pos_weight_power must be in [0, 2]"),
])
def test_tied_and_weighting_keys_are_checked(study, params, fixed, message):
    with pytest.raises(SpaceError) as exc:
        parse_space({"study": study, "fixed": fixed, "params": params})
    assert message in str(exc.value)


def test_effective_batch_ties_accumulation_to_the_searched_batch_size(tmp_path, cache):
    """Each trial's accum_steps is effective_batch / batch_size, recorded in its config and the study; the grid
    covers the batch sizes once each, and the report's best.json says the derived value."""
    space = _space({"batch_size": [8, 16, 32]}, study={"pruner": "none", "effective_batch": 32}, epochs=1)
    assert space.to_dict()["effective_batch"] == 32
    assert "effective_batch" not in _space({"lr": [1e-3]}).to_dict()  # studies made before the key still match
    study = run_study(TuneSpec(cache=str(cache), space=space, out=str(tmp_path / "s"), trials=3, grid=True,
                               progress=False))
    configs = [json.loads((tmp_path / "s" / t.user_attrs["run_dir"] / "config.json").read_text())
               for t in _trials(study)]
    assert sorted((c["batch_size"], c["accum_steps"]) for c in configs) == [(8, 4), (16, 2), (32, 1)]
    assert all(t.user_attrs["derived"]["accum_steps"] * t.params["batch_size"] == 32 for t in _trials(study))
    from cxrkit.tuning.report import best_summary

    best = best_summary(study, tmp_path / "s")
    assert best["derived"]["accum_steps"] * best["params"]["batch_size"] == 32


def test_pos_weight_power_scales_chexnet_weights():
    from cxrkit.training.losses import prevalence_pos_weight

    y = np.array([[1, 0], [0, 0], [0, 1], [0, 1], [0, np.nan]], dtype=np.float32)  # 1 pos/4 neg; 2 pos/2 neg
    np.testing.assert_allclose(prevalence_pos_weight(y), [4.0, 1.0])
    np.testing.assert_allclose(prevalence_pos_weight(y, 0.5), [2.0, 1.0])
    np.testing.assert_allclose(prevalence_pos_weight(y, 0.0), [1.0, 1.0])
