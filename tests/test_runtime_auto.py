"""The fastest correct runtime by default: a bundle straight out of `cxr train` carries its ONNX + INT8 graphs and
the INT8 accuracy check; `cxr predict` and `cxr serve` run it on the fastest backend without flags and say so."""
from __future__ import annotations

import csv
import json
import shutil

import pytest
from typer.testing import CliRunner

pytest.importorskip("onnxruntime")

from cxrkit.bundle import read_bundle_config, write_bundle_config  # noqa: E402
from cxrkit.data.decode import read_image  # noqa: E402
from cxrkit.data.labels import NIH_FINDINGS  # noqa: E402
from cxrkit.deploy.onnx_runtime import load_predictor  # noqa: E402
from cxrkit.deploy.runtime import INT8_TOLERANCE, choose_runtime  # noqa: E402

FAST = "openvino" if __import__("importlib").util.find_spec("openvino") else "onnx"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """`cxr train` with nothing but the size knobs: the default path, automatic export included."""
    from test_training import make_tiny_nih

    from cxrkit.cli import build_app
    from cxrkit.data.cache import prepare

    base = tmp_path_factory.mktemp("auto")
    prepare(make_tiny_nih(base / "nih", n=80, size=48), base / "cache", size=48, workers=1, progress=False)
    res = CliRunner().invoke(build_app(), ["train", str(base / "cache"), "--out", str(base / "run"), "--arch",
                                           "cxr_tiny", "--size", "48", "--epochs", "1", "--batch-size", "16",
                                           "--num-threads", "1", "--no-tensorboard", "--no-quality-gate"])
    assert res.exit_code == 0, res.output
    assert "exported model.onnx + model.int8.onnx" in res.output
    return base / "run" / "bundle"


def _with_int8_change(src, dst, change: float):
    shutil.copytree(src, dst)
    cfg = read_bundle_config(dst)
    cfg["export"]["int8"]["auroc_change"] = change
    write_bundle_config(dst, cfg)
    return dst


def test_train_leaves_graphs_and_the_int8_check(trained):
    assert (trained / "model.onnx").is_file() and (trained / "model.int8.onnx").is_file()
    rec = read_bundle_config(trained)["export"]
    assert rec["onnx"]["max_abs_diff_vs_torch"] <= rec["onnx"]["tolerance"]
    int8 = rec["int8"]
    assert int8["split"] == "val" and int8["n_images"] > 0 and int8["runtime"] == FAST
    assert 0 < int8["max_prob_change"] < 0.2  # quantised: close to fp32, not identical
    assert int8["auroc_change"] == pytest.approx(int8["auroc_int8"] - int8["auroc_fp32"])
    choice = choose_runtime(trained)
    assert choice.backend == FAST and not choice.asked
    assert choice.precision == ("int8" if int8["auroc_change"] >= -INT8_TOLERANCE else "fp32")


def test_tolerance_rule_falls_back_to_fp32(trained, tmp_path):
    bad = choose_runtime(_with_int8_change(trained, tmp_path / "bad", -2 * INT8_TOLERANCE))
    assert (bad.backend, bad.precision) == (FAST, "fp32") and "exceeds the tolerance" in bad.reason
    assert bad.describe()["accuracy_change"] is None and bad.describe()["int8_check"]["auroc_change"] < 0
    good = choose_runtime(_with_int8_change(trained, tmp_path / "good", -INT8_TOLERANCE / 5))
    assert (good.backend, good.precision) == (FAST, "int8")
    assert choose_runtime(tmp_path / "bad", backend="torch").backend == "torch"  # a flag still overrides
    assert choose_runtime(tmp_path / "good", heatmaps=True).backend == "torch"


def test_predict_and_serve_use_it_without_flags(trained, tmp_path, shared_data):
    pytest.importorskip("fastapi")
    import httpx

    from cxrkit.cli import build_app
    from cxrkit.deploy.serve.app import create_app
    from cxrkit.deploy.serve.live import serve_in_thread

    bundle = _with_int8_change(trained, tmp_path / "b", -INT8_TOLERANCE / 5)  # INT8 accepted: the fastest path
    change = read_bundle_config(bundle)["export"]["int8"]["auroc_change"]
    img = sorted((shared_data / "nih-sample" / "images").glob("*.png"))[0]
    ref = load_predictor(bundle, FAST, precision="int8").predict([read_image(img)])[0]
    runner = CliRunner()
    for out in (tmp_path / "r.csv", tmp_path / "r.jsonl"):
        res = runner.invoke(build_app(), ["predict", str(bundle), str(img), "--out", str(out)])
        assert res.exit_code == 0, res.output
        assert f"runtime: {FAST}-int8 (auto:" in res.output
    lines = (tmp_path / "r.csv").read_text().splitlines()
    row = next(csv.DictReader(lines[1:]))
    assert row["runtime"] == f"{FAST}-int8" and float(row["runtime_auroc_change"]) == pytest.approx(change)
    assert max(abs(float(row[n]) - p) for n, p in zip(NIH_FINDINGS, ref)) <= 1e-5
    obj = json.loads((tmp_path / "r.jsonl").read_text().splitlines()[0])
    assert obj["runtime"]["backend"] == FAST and obj["runtime"]["chosen"] == "auto"
    assert obj["runtime"]["accuracy_change"]["auroc_change"] == pytest.approx(change)

    key = {"X-API-Key": "k" * 24}
    with serve_in_thread(create_app(bundle, api_key="k" * 24, max_batch=2, max_wait_ms=1)) as url, \
            httpx.Client(base_url=url, timeout=30) as client:
        info = client.get("/v1/model", headers=key).json()
        assert info["runtime"]["backend"] == FAST and info["runtime"]["precision"] == "int8"
        assert info["runtime_choice"]["chosen"] == "auto"
        assert info["runtime_choice"]["accuracy_change"]["auroc_change"] == pytest.approx(change)
        r = client.post("/v1/predict", files={"file": ("x.png", img.read_bytes(), "image/png")}, headers=key)
        assert r.status_code == 200, r.text
        assert r.json()["runtime"]["precision"] == "int8" and r.json()["runtime"]["chosen"] == "auto"
