"""Wrong-path mistakes a newcomer makes get an answer that names the right path."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cxrkit.bundle import BundleError, read_bundle_config
from cxrkit.data.errors import CacheError

SRC = Path(__file__).resolve().parents[1] / "src"


def _cxr(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")])),
               CXR_API_KEY="k" * 24)
    return subprocess.run([str(Path(sys.executable).with_name("cxr")), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=180)


@pytest.fixture()
def run_dir(tmp_path, make_tiny_bundle) -> Path:
    run = tmp_path / "runs" / "r1"
    make_tiny_bundle(run / "bundle")
    (run / "config.json").write_text(json.dumps({"arch": "resnet10t", "epochs": 3}))  # the training config
    return run


def test_run_folder_instead_of_bundle_says_did_you_mean(run_dir):
    with pytest.raises(BundleError, match=r"training run folder, not a bundle: did you mean .*r1/bundle\?"):
        read_bundle_config(run_dir)
    (run_dir / "config.json").unlink()
    with pytest.raises(BundleError, match=r"did you mean .*r1/bundle\?"):
        read_bundle_config(run_dir)
    assert read_bundle_config(run_dir / "bundle")["format"] == "cxrkit-bundle"


def test_serve_checks_the_bundle_before_saying_serving(run_dir, tmp_path):
    proc = _cxr("serve", str(run_dir), "--port", "8765", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "did you mean" in proc.stderr and "serving" not in proc.stderr + proc.stdout


def test_train_on_a_dataset_folder_suggests_a_separate_cache(tmp_path):
    from cxrkit.data import open_cache

    data = tmp_path / "data" / "phantom"
    (data / "images").mkdir(parents=True)
    (data / "Data_Entry_2017.csv").write_text("Image Index\n")
    with pytest.raises(CacheError, match=r"dataset folder, not a prepared cache.*cxr prepare .*phantom "
                                         r"cache/phantom") as err:
        open_cache(data)
    assert f"cxr prepare SOURCE {data}" not in str(err.value)
    proc = _cxr("train", str(data), "--out", str(tmp_path / "run"), cwd=tmp_path)
    assert proc.returncode == 2 and "cache/phantom" in proc.stderr and "Traceback" not in proc.stderr


def test_bundle_files_share_one_mode(tmp_path, make_tiny_bundle):
    bundle = make_tiny_bundle(tmp_path / "b")
    modes = {p.name: p.stat().st_mode & 0o777 for p in bundle.iterdir() if p.is_file()}
    assert len(set(modes.values())) == 1, modes


def test_tour_outputs_are_ignored():
    ignored = (Path(__file__).resolve().parents[1] / ".gitignore").read_text().split()
    for path in ("/data/", "/cache/", "/runs/", "/heatmaps/", "/results.csv", "/fast.csv"):
        assert path in ignored, path
