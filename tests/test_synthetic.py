"""A bundle knows whether it was trained on synthetic (phantom) films, and every output of a synthetic one says so."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from cxrkit.bundle import SYNTHETIC_WARNING, read_bundle_config, trained_on_synthetic, write_bundle_config

SRC = Path(__file__).resolve().parents[1] / "src"
KEY = "synthetic-key-0123456789abcdef"


def mark_synthetic(bundle: Path, synthetic: bool = True) -> Path:
    config = read_bundle_config(bundle)
    config["provenance"]["synthetic"] = synthetic
    write_bundle_config(bundle, config)
    return bundle


def test_trained_on_synthetic_reads_the_flag_and_older_bundles():
    assert trained_on_synthetic({"provenance": {"synthetic": True}})
    assert not trained_on_synthetic({"provenance": {"synthetic": False, "data_source": {"name": "phantom"}}})
    # bundles written before the flag: the cache manifest's source name
    assert trained_on_synthetic({"provenance": {"data_source": {"name": "phantom", "path": "/x"}}})
    assert not trained_on_synthetic({"provenance": {"data_source": {"name": "nih"}}})
    assert not trained_on_synthetic({"provenance": {}}) and not trained_on_synthetic({})
    # an ensemble with one phantom member
    assert trained_on_synthetic({"provenance": {"members": [{"synthetic": False}, {"synthetic": True}]}})
    assert "synthetic" in SYNTHETIC_WARNING.lower() and "meaningless" in SYNTHETIC_WARNING


def test_training_records_what_the_cache_holds(tmp_path, shared_data):
    from cxrkit.data import open_cache, prepare
    from cxrkit.data.phantom import generate
    from cxrkit.training.config import TrainConfig
    from cxrkit.training.finalize import _trained_on_synthetic_rows

    generate(tmp_path / "phantom", n=24, size=64, seed=0, progress=False)
    phantom = prepare(tmp_path / "phantom", tmp_path / "pc", size=32, workers=1, progress=False)
    real = prepare(shared_data / "nih-sample", tmp_path / "rc", size=32, workers=1, progress=False)
    cfg = TrainConfig(cache=str(tmp_path / "pc"), out=str(tmp_path / "run"))
    assert _trained_on_synthetic_rows(open_cache(phantom.path), cfg) is True
    assert _trained_on_synthetic_rows(open_cache(real.path), cfg) is False


def _cxr(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")])))
    return subprocess.run([str(Path(sys.executable).with_name("cxr")), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("synthetic", [True, False])
def test_cli_predict_warns_for_a_synthetic_bundle(tmp_path, shared_data, make_tiny_bundle, synthetic):
    bundle = mark_synthetic(make_tiny_bundle(tmp_path / "b"), synthetic)
    film = shared_data / "nih-sample" / "images" / "00000075_000.png"
    proc = _cxr("predict", str(bundle), str(film), "--out", str(tmp_path / "p.csv"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (SYNTHETIC_WARNING in proc.stderr) is synthetic


def test_cli_explain_warns_in_terminal_and_page(tmp_path, shared_data, make_tiny_bundle):
    bundle = mark_synthetic(make_tiny_bundle(tmp_path / "b"))
    film = shared_data / "nih-sample" / "images" / "00000075_000.png"
    proc = _cxr("explain", str(bundle), str(film), "--out", str(tmp_path / "h"), "--top-k", "1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert SYNTHETIC_WARNING in proc.stderr
    assert SYNTHETIC_WARNING in (tmp_path / "h" / "index.html").read_text()


def test_service_json_says_synthetic(tmp_path, shared_data, make_tiny_bundle):
    pytest.importorskip("fastapi")
    from cxrkit.deploy.serve.app import create_app
    from cxrkit.deploy.serve.live import serve_in_thread

    png = (shared_data / "nih-sample" / "images" / "00000075_000.png").read_bytes()
    auth = {"X-API-Key": KEY}
    for synthetic in (True, False):
        bundle = mark_synthetic(make_tiny_bundle(tmp_path / f"b{synthetic}"), synthetic)
        with serve_in_thread(create_app(bundle, api_key=KEY)) as url, httpx.Client(base_url=url, timeout=30) as c:
            model = c.get("/v1/model", headers=auth).json()
            pred = c.post("/v1/predict", files={"file": ("f.png", png)}, headers=auth).json()
        for body in (model, pred):
            assert body["synthetic_training_data"] is synthetic
            assert body["warning"] == (SYNTHETIC_WARNING if synthetic else None)
            assert body["synthetic_initialisation"] is False and body["note"] is None
    assert json.loads(json.dumps(pred))["quality"]["score"] is None  # no gate fitted: the page must not say "passed"


def test_a_model_fine_tuned_from_a_phantom_model_says_where_it_started(tmp_path, shared_data, make_tiny_bundle):
    """Phantom-supervised pretraining then real films (docs/small-data.md): the new bundle is not a synthetic-data
    model (it learnt from real labels) but records and says that it started from one; a chain keeps the record."""
    from cxrkit.bundle.synthetic import SYNTHETIC_INIT_NOTE, init_is_synthetic, initialised_from_synthetic
    from cxrkit.data import prepare
    from cxrkit.training import TrainConfig, train

    phantom_model = mark_synthetic(make_tiny_bundle(tmp_path / "ph", arch="cxr_tiny", size=32))
    real_model = mark_synthetic(make_tiny_bundle(tmp_path / "real", arch="cxr_tiny", size=32), False)
    assert init_is_synthetic(str(phantom_model)) and not init_is_synthetic(str(real_model))
    assert not init_is_synthetic(None) and not init_is_synthetic(str(tmp_path / "missing"))
    cache = prepare(shared_data / "nih-sample", tmp_path / "rc", size=32, workers=1, progress=False)
    result = train(TrainConfig(cache=str(cache.path), out=str(tmp_path / "ft"), arch="cxr_tiny", image_size=32,
                               epochs=1, batch_size=32, max_steps_per_epoch=2, pretrained=str(phantom_model),
                               quality_gate=False, export=False, tensorboard=False, quiet=True))
    config = read_bundle_config(result.bundle_dir)
    assert not trained_on_synthetic(config) and initialised_from_synthetic(config)
    assert init_is_synthetic(str(result.bundle_dir))  # fine-tuning it again keeps the record

    film = shared_data / "nih-sample" / "images" / "00000075_000.png"
    proc = _cxr("predict", str(result.bundle_dir), str(film), "--out", str(tmp_path / "p.csv"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert SYNTHETIC_INIT_NOTE in proc.stderr and SYNTHETIC_WARNING not in proc.stderr
