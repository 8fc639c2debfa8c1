"""The OpenVINO backend: the exported ONNX files run by OpenVINO on the CPU, same predictor interface."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

pytest.importorskip("openvino")

from cxrkit.bundle import load_bundle  # noqa: E402
from cxrkit.data.decode import read_image  # noqa: E402
from cxrkit.data.labels import NIH_FINDINGS  # noqa: E402
from cxrkit.deploy.export import export, synthetic_parity_images  # noqa: E402
from cxrkit.deploy.onnx_runtime import BackendError, load_predictor  # noqa: E402
from cxrkit.deploy.openvino_runtime import OpenVinoPredictor, buckets_for, plan_batches  # noqa: E402


@pytest.fixture(scope="module")
def exported(tmp_path_factory, make_tiny_bundle):
    """A calibrated bundle whose runtime resizes (preresize 80 -> input 64), exported to fp32 and static INT8."""
    from cxrkit.bundle import read_bundle_config, write_bundle_config

    b = make_tiny_bundle(tmp_path_factory.mktemp("ov") / "b")
    config = read_bundle_config(b)
    config["preresize"] = 80
    config["calibration"] = {"method": "temperature", "temperature": [1.2 + 0.05 * i for i in range(14)]}
    write_bundle_config(b, config)
    export(b, "onnx", None, int8=True, calib_images=synthetic_parity_images(80, 24, seed=1))
    return b


@pytest.fixture(scope="module")
def films(shared_data):
    return [read_image(p) for p in sorted((shared_data / "nih-sample" / "images").glob("*.png"))[:7]]


def test_fp32_matches_onnx_runtime_and_torch(exported, films):
    ov = load_predictor(exported, "openvino", threads=1)
    assert isinstance(ov, OpenVinoPredictor) and ov.device == "cpu"
    o, r = ov.predict_full(films, batch_size=3), load_predictor(exported, "onnx").predict_full(films, batch_size=3)
    t = load_bundle(exported).predict(films)
    assert np.abs(o["probs"] - r["probs"]).max() <= 1e-4
    assert np.abs(o["probs"] - t).max() <= 1e-4
    np.testing.assert_allclose(o["embedding"], r["embedding"], atol=1e-4)
    np.testing.assert_allclose(o["abnormality"], r["abnormality"], atol=1e-4)
    assert list(ov.label_names) == list(NIH_FINDINGS)


def test_batches_run_in_bounded_buckets_and_rows_independent(exported, films):
    ov = OpenVinoPredictor(exported / "model.onnx", max_batch=4)
    one_by_one = np.concatenate([ov.predict([f]) for f in films])
    together = ov.predict(films, batch_size=7)  # 7 rows: a padded chunk of 4 and one of 4 (3 real rows)
    np.testing.assert_allclose(together, one_by_one, atol=1e-5)
    assert sorted(ov._requests) == [1, 4]
    assert ov.predict([]).shape == (0, 14)
    assert buckets_for(16) == (1, 4, 16) and buckets_for(4) == (1, 4)
    # at most three compiled shapes whatever the batch sizes; padding only where it is cheaper than another call
    plans = {n: plan_batches(n, (1, 4, 16)) for n in (1, 2, 3, 5, 14, 16, 17, 100)}
    assert plans == {1: [1], 2: [1, 1], 3: [4], 5: [4, 1], 14: [16], 16: [16], 17: [16, 1],
                     100: [16] * 6 + [4]}
    assert all(sum(p) >= n and sum(p) - n < 4 for n, p in plans.items())
    many = OpenVinoPredictor(exported / "model.onnx")
    for n in (1, 2, 3, 5, 9, 17):
        many.predict(films[:1] * n, batch_size=n)
    assert sorted(many._requests) == [1, 4, 16]


def test_int8_and_bf16_run_close_to_fp32(exported, films):
    fp32 = load_predictor(exported, "openvino").predict(films)
    int8 = load_predictor(exported, "openvino", precision="int8")
    assert int8.onnx_path.name == "model.int8.onnx"
    diff8 = np.abs(int8.predict(films) - fp32).max()
    assert 0 < diff8 < 0.05  # quantised: not identical, and close
    bf16 = load_predictor(exported, "openvino", precision="bf16").predict(films)
    assert np.abs(bf16 - fp32).max() < 0.05


def test_errors(exported, tmp_path, make_tiny_bundle):
    with pytest.raises(BackendError, match="CPU"):
        load_predictor(exported, "openvino", device="cuda")
    with pytest.raises(BackendError, match="fp32 / int8 / bf16"):
        load_predictor(exported, "openvino", precision="fp16")
    with pytest.raises(BackendError, match="fp32 / int8"):
        load_predictor(exported, "onnx", precision="bf16")
    with pytest.raises(BackendError, match="cxr export"):
        load_predictor(make_tiny_bundle(tmp_path / "plain"), "openvino")
    with pytest.raises(BackendError, match="max_batch"):
        OpenVinoPredictor(exported / "model.onnx", max_batch=0)
    standalone = load_predictor(exported / "model.onnx", "openvino")  # the .onnx alone carries the config
    assert standalone.path is None and list(standalone.label_names) == list(NIH_FINDINGS)


def test_cli_predict_with_openvino_backend(exported, tmp_path, shared_data):
    from cxrkit.cli import build_app

    img = sorted((shared_data / "nih-sample" / "images").glob("*.png"))[0]
    out = tmp_path / "r.jsonl"
    res = CliRunner().invoke(build_app(stages=("cxrkit.deploy.cli",)),
                             ["predict", str(exported), str(img), "--out", str(out), "--backend", "openvino",
                              "--precision", "int8"])
    assert res.exit_code == 0, res.output
    row = json.loads(out.read_text())
    ref = load_predictor(exported, "openvino", precision="int8").predict([read_image(img)])[0]
    assert max(abs(row["probs"][n] - p) for n, p in zip(NIH_FINDINGS, ref)) <= 1e-5


def test_bench_reports_openvino_rows(exported, tmp_path):
    from cxrkit.deploy.bench import cpu_report, default_cpu_backends

    assert "openvino-int8" in default_cpu_backends()
    torch_threads = torch.get_num_threads()
    r = cpu_report(exported, None, tmp_path, n=4, size=80, threads=1,
                   backends=("onnx-fp32", "openvino-fp32", "openvino-int8"))
    assert torch.get_num_threads() == torch_threads  # the thread setting is the call's own
    assert r["threads"] == 1
    assert set(r["backends"]) == {"onnx-fp32", "openvino-fp32", "openvino-int8"}
    assert r["speedup_p50_vs_onnx_fp32"]["onnx-fp32"] == pytest.approx(1.0)
    assert all(v["p50_ms"] > 0 for v in r["backends"].values())
    alone = cpu_report(exported, None, tmp_path / "alone", n=2, size=80, threads=1, backends=("openvino-int8",))
    assert set(alone["backends"]) == {"openvino-int8"} and "speedup_p50_vs_onnx_fp32" not in alone


def test_serve_with_openvino_int8(exported, shared_data):
    pytest.importorskip("fastapi")
    import httpx

    from cxrkit.deploy.serve.app import create_app
    from cxrkit.deploy.serve.live import serve_in_thread

    img = sorted((shared_data / "nih-sample" / "images").glob("*.png"))[0]
    app = create_app(exported, api_key="k" * 24, backend="openvino", precision="int8", max_batch=4, max_wait_ms=5)
    with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        r = client.post("/v1/predict", files={"file": ("x.png", img.read_bytes(), "image/png")},
                        headers={"X-API-Key": "k" * 24})
        assert r.status_code == 200, r.text
        ref = load_predictor(exported, "openvino", precision="int8").predict([read_image(img)])[0]
        got = {f["name"]: f["probability"] for f in r.json()["findings"]}
        assert max(abs(got[n] - p) for n, p in zip(NIH_FINDINGS, ref)) <= 1e-5
        info = client.get("/v1/model", headers={"X-API-Key": "k" * 24}).json()
        assert info["runtime"] == {"backend": "openvino", "precision": "int8", "device": "cpu",
                                   "file": "model.int8.onnx"}
        assert r.json()["runtime"]["backend"] == "openvino" and info["runtime_choice"]["chosen"] == "asked"
        # heatmaps come from the bundle's torch weights, loaded on the heatmap thread: the fast runtime keeps them
        heat = client.post("/v1/predict", params={"heatmap": "true"}, headers={"X-API-Key": "k" * 24},
                           files={"file": ("x.png", img.read_bytes(), "image/png")})
        assert heat.status_code == 200, heat.text
        assert set(heat.json()["heatmaps"]["overlays"]) == set(NIH_FINDINGS)
