"""End-to-end tests of `cxr train`: a real cache, real training, SIGKILL + resume, DDP, bundle, bench."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from cxrkit.data.errors import CacheError
from cxrkit.data.labels import NIH_FINDINGS
from cxrkit.training import TrainConfig, train
from cxrkit.training.config import ConfigError

torch.set_num_threads(1)
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def make_tiny_nih(root: Path, n: int = 200, size: int = 64, seed: int = 0) -> Path:
    """An NIH-layout folder whose findings are learnable: finding c draws a bright disc in grid cell c."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    rows = []
    for i in range(n):
        img = rng.normal(90, 20, (size, size)).clip(0, 255)
        pos = np.flatnonzero(rng.random(len(NIH_FINDINGS)) < 0.25)
        for c in pos:
            cv2.circle(img, (int((c % 4 + 0.5) * size / 4), int((c // 4 + 0.5) * size / 4)), size // 12, 220, -1)
        name = f"{i:08d}_000.png"
        cv2.imwrite(str(root / "images" / name), img.astype(np.uint8))
        rows.append({"Image Index": name, "Finding Labels": "|".join(NIH_FINDINGS[c] for c in pos) or "No Finding",
                     "Follow-up #": 0, "Patient ID": i + 1, "Patient Age": 50, "Patient Gender": "M",
                     "View Position": "PA"})
    pd.DataFrame(rows).to_csv(root / "Data_Entry_2017.csv", index=False)
    return root


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from cxrkit.data.cache import prepare

    base = tmp_path_factory.mktemp("train")
    src = make_tiny_nih(base / "nih")
    prepare(src, base / "cache", size=64, workers=1, progress=False)
    return base


def _cfg(base: Path, out: str, **kw) -> TrainConfig:
    args = dict(cache=str(base / "cache"), out=str(base / out), arch="resnet10t", image_size=64, epochs=2,
                batch_size=16, checkpoint_every=3, num_threads=1, deterministic=True, quiet=True, tensorboard=False,
                export=False)  # the automatic ONNX export is tested in test_runtime_auto.py
    args.update(kw)
    return TrainConfig(**args)


CLI_ARGS = ["--arch", "resnet10t", "--epochs", "2", "--size", "64", "--batch-size", "16", "--checkpoint-every", "3",
            "--num-threads", "1", "--deterministic", "--quiet", "--no-tensorboard", "--no-export"]


def _weights(bundle: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(bundle / "model.safetensors"))


@pytest.fixture(scope="module")
def reference_run(tiny):
    """An uninterrupted run (in-process), also checked for leaving the global RNGs alone."""
    torch_state, np_state = torch.get_rng_state(), np.random.get_state()
    result = train(_cfg(tiny, "run_ref", tensorboard=True))
    assert torch.equal(torch_state, torch.get_rng_state())
    assert np.array_equal(np_state[1], np.random.get_state()[1])
    return result


def test_run_outputs(reference_run, tiny):
    run = reference_run.run_dir
    assert reference_run.bundle_dir == run / "bundle" and reference_run.epochs_run == 2
    lines = [json.loads(x) for x in (run / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in lines] == [0, 1]
    for key in ("train_loss", "val_loss", "val_mean_auroc", "val_auroc", "lr", "img_per_s", "time_s"):
        assert key in lines[0]
    assert set(lines[0]["val_auroc"]) == set(NIH_FINDINGS)
    assert reference_run.best_metric == max(h["val_mean_auroc"] for h in lines)
    saved = json.loads((run / "config.json").read_text())
    assert saved["arch"] == "resnet10t" and saved["cache_size"] == 64 and saved["label_names"] == list(NIH_FINDINGS)
    bundle = json.loads((run / "bundle" / "config.json").read_text())
    assert bundle["threshold_policy"] == "youden-validation"
    assert bundle["input"] == {"size": 64, "preresize": 64, "channels": 1, "resize": "fit_square",
                               "mean": pytest.approx(0.449), "std": pytest.approx(0.226),
                               "range": [pytest.approx(-0.449 / 0.226), pytest.approx(0.551 / 0.226)],
                               "polarity": "MONOCHROME2"}
    prov = bundle["provenance"]
    for key in ("git_commit", "data_manifest_hash", "data_source", "package_versions", "train_config", "seed"):
        assert key in prov
    assert prov["data_manifest_hash"].startswith("sha256:") and prov["train_config"]["arch"] == "resnet10t"
    assert bundle["metrics"]["mean_auroc"] == pytest.approx(reference_run.best_metric)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/lr", "val/loss", "val/mean_auroc", "val_auroc/Effusion"} <= tags


def test_bundle_reproduces_validation_predictions_in_new_process(reference_run, tiny):
    code = (
        "import sys, numpy as np, torch, cxrkit\n"
        "from cxrkit.data.cache import open_cache\n"
        "run, cache = sys.argv[1], sys.argv[2]\n"
        "val = np.load(run + '/val_predictions.npz', allow_pickle=False)\n"
        "pred = cxrkit.load_bundle(run + '/bundle')\n"
        "images = np.asarray(open_cache(cache).images[val['rows']])\n"
        "probs = pred.predict(list(images))\n"
        "print(float(np.abs(probs - val['probs']).max()))\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(reference_run.run_dir), str(tiny / "cache")],
                         capture_output=True, text=True, env=ENV, timeout=120)
    assert out.returncode == 0, out.stderr
    assert float(out.stdout.strip().splitlines()[-1]) < 1e-5


def test_resume_after_sigkill_is_bit_identical(reference_run, tiny):
    run = tiny / "run_killed"
    cmd = [sys.executable, "-m", "cxrkit.training", str(tiny / "cache"), "--out", str(run), *CLI_ARGS]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    ckpt = run / "checkpoints" / "last.pt"
    deadline = time.time() + 120
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    assert ckpt.exists(), "no checkpoint landed before the kill"
    assert not (run / "bundle").exists(), "the run finished before it could be killed"
    state = torch.load(ckpt, weights_only=True)
    assert state["epoch"] == 0 and state["micro"] == 3  # killed mid-epoch, after 3 optimiser steps

    done = subprocess.run(cmd + ["--resume"], env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    ref, got = _weights(reference_run.bundle_dir), _weights(run / "bundle")
    assert ref.keys() == got.keys()
    assert all(torch.equal(ref[k], got[k]) for k in ref)
    ref_hist = [json.loads(x) for x in (reference_run.run_dir / "history.jsonl").read_text().splitlines()]
    got_hist = [json.loads(x) for x in (run / "history.jsonl").read_text().splitlines()]
    assert [h["val_loss"] for h in ref_hist] == [h["val_loss"] for h in got_hist]
    assert [h["train_loss"] for h in ref_hist] == [h["train_loss"] for h in got_hist]


def test_ddp_two_cpu_processes(tiny):
    run = tiny / "run_ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
           "cxrkit.training", str(tiny / "cache"), "--out", str(run), "--arch", "resnet10t", "--epochs", "1",
           "--size", "64", "--batch-size", "8", "--device", "cpu", "--num-threads", "1", "--quiet"]
    out = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert (run / "bundle" / "model.safetensors").is_file()
    hist = [json.loads(x) for x in (run / "history.jsonl").read_text().splitlines()]
    assert len(hist) == 1 and hist[0]["val_mean_auroc"] is not None
    with np.load(run / "val_predictions.npz", allow_pickle=False) as val:
        from cxrkit.data.cache import open_cache

        # predictions from both ranks were gathered: every validation image exactly once
        assert np.array_equal(np.sort(val["rows"]), open_cache(tiny / "cache").rows("val"))


def test_refuses_mismatched_cache_and_existing_run(reference_run, tiny):
    from cxrkit.data.cache import prepare

    with pytest.raises(CacheError, match="labels"):
        train(_cfg(tiny, "run_x", label_names=["Effusion"]))
    with pytest.raises(CacheError, match="128"):
        train(_cfg(tiny, "run_x", cache_size=128))
    with pytest.raises(ConfigError, match="--resume"):
        train(_cfg(tiny, "run_ref"))
    other = prepare(tiny / "nih", tiny / "cache48", size=48, workers=1, progress=False)
    with pytest.raises(CacheError, match="cache_size"):
        train(_cfg(tiny, "run_ref", cache=str(other.path), resume=True))


def test_nan_loss_stops_with_clear_error(tiny):
    from safetensors.torch import save_file

    from cxrkit.models import create_model
    from cxrkit.training.trainer import NonFiniteLossError

    sd = create_model("resnet10t", 14).backbone.model.state_dict()
    first = next(k for k, v in sd.items() if v.ndim == 4)
    sd[first] = torch.full_like(sd[first], float("nan"))
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tiny / "nan.safetensors"))
    with pytest.raises(NonFiniteLossError, match="loss became nan"):
        train(_cfg(tiny, "run_nan", pretrained=str(tiny / "nan.safetensors"), log_every=1, max_steps_per_epoch=2))


def test_bench_train_tiny(tiny, tmp_path):
    from typer.testing import CliRunner

    from cxrkit.cli import build_app

    app = build_app(stages=("cxrkit.training.cli",))
    out = tmp_path / "bench.json"
    res = CliRunner().invoke(app, ["bench", "train", "--source", str(tiny / "nih"), "--work-dir", str(tmp_path),
                                   "--arch", "resnet10t", "--size", "48", "--batch", "16", "--ref-batch", "8",
                                   "--steps", "2", "--warmup", "1", "--workers", "0", "--device", "cpu",
                                   "--out", str(out)])
    assert res.exit_code == 0, res.output
    result = json.loads(out.read_text())
    assert result["cxrkit"]["img_per_s"] > 0 and result["reference"]["img_per_s"] > 0
    assert result["ratio"] == pytest.approx(result["cxrkit"]["img_per_s"] / result["reference"]["img_per_s"])
    assert "speed-up" in res.output


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_cuda_amp_training_and_bundle(tiny, precision):
    result = train(_cfg(tiny, f"run_cuda_{precision}", device="cuda", precision=precision, epochs=1,
                        deterministic=False, channels_last=True))
    import cxrkit

    pred = cxrkit.load_bundle(result.bundle_dir, device="cuda")
    with np.load(result.run_dir / "val_predictions.npz", allow_pickle=False) as val:
        from cxrkit.data.cache import open_cache

        images = np.asarray(open_cache(tiny / "cache").images[val["rows"]])
        # training validated under autocast, the predictor runs fp32: close, not identical
        assert np.abs(pred.predict(list(images)) - val["probs"]).max() < 0.05
