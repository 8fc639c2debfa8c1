"""What a user sees around `cxr train` (progress without a terminal, why early stopping stopped, a fitted quality
gate in every trained bundle) and `cxr import` / `cxr train --pretrained KIND:FILE` end to end."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_training import make_tiny_nih

SRC = Path(__file__).resolve().parents[1] / "src"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC),
                                                                                         os.environ.get("PYTHONPATH")]))}


def cxr(*args, cwd: Path) -> subprocess.CompletedProcess:
    """The real `cxr` with stdout/stderr as pipes: not a terminal, like CI logs and nohup."""
    code = "import sys; from cxrkit.cli import main; sys.argv[0] = 'cxr'; main()"
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=cwd, env=ENV, capture_output=True,
                          text=True, timeout=600, check=False)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    from cxrkit.data.cache import prepare

    base = tmp_path_factory.mktemp("usab")
    prepare(make_tiny_nih(base / "nih", n=120, size=48), base / "cache", size=48, workers=1, progress=False)
    return base / "cache"


def test_progress_lines_early_stop_and_gate_without_a_terminal(cache, tmp_path):
    run = tmp_path / "run"
    # lr so small that the validation loss only drifts: with --early-stop 1 the first epoch without improvement
    # ends the run (nearly always before epoch 4)
    proc = cxr("train", cache, "--out", run, "--arch", "cxr_tiny", "--size", "48", "--epochs", "4", "--batch-size",
               "8", "--lr", "1e-9", "--early-stop", "1", "--select", "loss", "--num-threads", "1",
               "--no-tensorboard", "--no-augment", "--no-export", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    err = proc.stderr
    first = err.index("epoch 1/4: batch 1/")  # a line after the very first step of epoch 1
    assert first < err.index("epoch 1: train loss")
    assert err.count("epoch 1/4: batch") >= 5
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    if len(history) < 4:  # stopped early: the line says when and why
        best = min(range(len(history)), key=lambda e: history[e]["val_loss"])
        assert (f"early stopping after epoch {len(history)} of 4: validation loss has not improved for 1 epochs "
                f"(--early-stop 1); best {history[best]['val_loss']:.4f} at epoch {best + 1}") in err
    else:
        assert "early stopping" not in err
    assert "quality gate (lr-handcrafted) fitted on" in err
    config = json.loads((run / "bundle" / "config.json").read_text())
    gate = config["quality_gate"]
    assert gate["method"] == "lr-handcrafted" and gate["fit"]["n_images"] > 10
    assert (run / "bundle" / "quality_gate.safetensors").is_file()


def test_no_quality_gate_and_quiet(cache, tmp_path):
    proc = cxr("train", cache, "--out", tmp_path / "r", "--arch", "cxr_tiny", "--size", "48", "--epochs", "1",
               "--batch-size", "8", "--num-threads", "1", "--no-tensorboard", "--no-quality-gate", "--quiet",
               "--no-export", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "epoch 1/1: batch" not in proc.stderr and "quality gate" not in proc.stderr
    assert json.loads((tmp_path / "r" / "bundle" / "config.json").read_text())["quality_gate"] is None
    assert not (tmp_path / "r" / "bundle" / "model.onnx").exists()  # --no-export


def test_cxr_import_and_train_from_it(cache, tmp_path):
    xrv = pytest.importorskip("torchxrayvision")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        src = xrv.models.DenseNet()
    weights = tmp_path / "xrv.pt"
    torch.save(src, weights)
    proc = cxr("import", "xrv-densenet121", weights, "--out", tmp_path / "b", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "range -1024..1024" in proc.stdout and "Lung Opacity" in proc.stdout

    bad = cxr("import", "chexnet-jrzech", weights, "--out", tmp_path / "b2", cwd=tmp_path)
    assert bad.returncode == 2 and "--trust-pickle" in bad.stderr and "Traceback" not in bad.stderr
    bad = cxr("import", "onnx", weights, "--out", tmp_path / "b3", cwd=tmp_path)
    assert bad.returncode == 2 and "unknown import kind" in bad.stderr

    run = tmp_path / "ft"
    proc = cxr("train", cache, "--out", run, "--arch", "densenet121", "--pretrained", f"xrv-densenet121:{weights}",
               "--size", "32", "--epochs", "1", "--max-steps", "1", "--batch-size", "4", "--num-threads", "1",
               "--no-tensorboard", "--no-quality-gate", "--quiet", "--no-export", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    inp = json.loads((run / "bundle" / "config.json").read_text())["input"]
    assert inp["mean"] == 0.5 and inp["std"] == pytest.approx(1 / 2048) and inp["range"] == [-1024.0, 1024.0]
