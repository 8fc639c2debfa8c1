"""Export (ONNX fp32 / static INT8 / TorchScript) with parity checks, and the ONNX Runtime predictor."""
from __future__ import annotations

import json

import cv2
import numpy as np
import onnx
import pytest
import torch
from typer.testing import CliRunner

from cxrkit.bundle import load_bundle, save_bundle, read_bundle_config, write_bundle_config
from cxrkit.data.decode import read_image
from cxrkit.data.labels import NIH_FINDINGS
from cxrkit.deploy.export import ExportError, export, export_onnx, export_torchscript, synthetic_parity_images
from cxrkit.deploy.onnx_runtime import BackendError, OnnxPredictor, load_predictor
from cxrkit.models import create_model

torch.set_num_threads(1)


def _bundle(path, normal_head=False, calibration=None, preresize=64):
    torch.manual_seed(0)
    save_bundle(path, create_model("resnet10t", 14, normal_head=normal_head), label_names=NIH_FINDINGS,
                input_size=64, preresize=preresize, mean=0.449, std=0.226,
                thresholds={n: 0.3 + 0.01 * i for i, n in enumerate(NIH_FINDINGS)})
    if calibration:
        config = read_bundle_config(path)
        config["calibration"] = calibration
        write_bundle_config(path, config)
    return path


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A bundle with temperature calibration and a 96-px preresize (so the runtime resizes), exported to ONNX."""
    b = _bundle(tmp_path_factory.mktemp("b"), calibration={"method": "temperature",
                                                            "temperature": [1.5 + 0.1 * i for i in range(14)]},
                preresize=96)
    report = export_onnx(b)
    return b, report


@pytest.fixture(scope="module")
def films(shared_data):
    return [read_image(p) for p in sorted((shared_data / "nih-sample" / "images").glob("*.png"))[:12]]


def test_an_lse_head_bundle_exports_with_its_cam(tmp_path, films):
    """LSE pooling (ReduceLogSumExp in the graph) and its CAM output match the torch predictor."""
    torch.manual_seed(0)
    save_bundle(tmp_path, create_model("cxr_tiny", 14, head="lse", lse_r=5.0), label_names=NIH_FINDINGS,
                input_size=64, preresize=64, mean=0.449, std=0.226)
    report = export_onnx(tmp_path)
    assert report["max_abs_diff"] <= 1e-4
    torch_pred, onnx_pred = load_bundle(tmp_path), load_predictor(tmp_path, "onnx")
    assert torch_pred.model.spec()["lse_r"] == 5.0
    np.testing.assert_allclose(onnx_pred.predict_full(films[:4])["probs"], torch_pred.predict_full(films[:4])["probs"],
                               atol=1e-4)
    assert "cam" in [o.name for o in onnx.load(report["path"]).graph.output]


def test_onnx_parity_covers_geometry_and_calibration(exported, films):
    b, report = exported
    assert report["max_abs_diff"] <= 1e-4 and report["path"].endswith("model.onnx")
    torch_pred, onnx_pred = load_bundle(b), load_predictor(b, "onnx")
    a, o = torch_pred.predict_full(films, batch_size=5), onnx_pred.predict_full(films, batch_size=5)
    assert np.abs(a["probs"] - o["probs"]).max() <= 1e-4
    np.testing.assert_allclose(a["abnormality"], o["abnormality"], atol=1e-4)
    assert onnx_pred.label_names == torch_pred.label_names
    np.testing.assert_array_equal(onnx_pred.thresholds, torch_pred.thresholds)
    np.testing.assert_array_equal(onnx_pred.positives(o["probs"]), torch_pred.positives(a["probs"]))
    assert o["embedding"].shape == (len(films), 512)


def test_onnx_graph_has_dynamic_batch_and_embedded_config(exported):
    b, report = exported
    model = onnx.load(report["path"])
    dim0 = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert dim0.dim_param and not dim0.dim_value
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["cxrkit_config"])["label_names"] == list(NIH_FINDINGS)
    standalone = OnnxPredictor(report["path"])  # the .onnx alone is enough to run
    for n in (1, 3, 7):
        out = standalone.run(np.zeros((n, 1, 64, 64), np.float32))
        assert out["logits"].shape == (n, 14)


def test_parity_check_fails_loudly(tmp_path):
    b = _bundle(tmp_path / "b")
    with pytest.raises(ExportError, match="parity check failed"):
        export_onnx(b, tmp_path / "m.onnx", tolerance=-1.0)


def test_normal_head_exports_abnormal_logit(tmp_path, films):
    b = _bundle(tmp_path / "b", normal_head=True)
    export_onnx(b, parity_images=np.stack([cv2.resize(f, (64, 64), interpolation=cv2.INTER_AREA) for f in films[:4]]))
    o = load_predictor(b, "onnx")
    assert "abnormal_logit" in o.output_names
    np.testing.assert_allclose(o.predict_full(films[:3])["abnormality"],
                               load_bundle(b).predict_full(films[:3])["abnormality"], atol=1e-4)


def test_static_int8_quantisation(exported, films, tmp_path):
    b, report = exported
    calib = synthetic_parity_images(96, 24, seed=1)
    reports = export(b, "onnx", tmp_path / "m.onnx", int8=True, calib_images=calib)
    fp32_report, int8_report = reports
    assert fp32_report["max_abs_diff"] <= 1e-4 and int8_report["path"].endswith("m.int8.onnx")
    ops = {n.op_type for n in onnx.load(int8_report["path"]).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    p8 = load_predictor(b, "onnx", onnx_file=int8_report["path"])
    p32 = load_predictor(b, "onnx")
    diff = np.abs(p8.predict(films) - p32.predict(films)).max()
    assert 0 < diff < 0.05  # quantised, not identical, and close
    with pytest.raises(ExportError, match="calib"):
        export(b, "onnx", tmp_path / "x.onnx", int8=True)


def test_torchscript_export_parity(tmp_path, films):
    b = _bundle(tmp_path / "b")
    report = export_torchscript(b, tmp_path / "m.ts")
    assert report["max_abs_diff"] <= 1e-4
    with pytest.warns(FutureWarning):  # TorchScript is deprecated upstream; still loadable by C++/mobile runtimes
        loaded = torch.jit.load(str(tmp_path / "m.ts"))
    pred = load_bundle(b)
    x = pred.model_input(pred.to_uint8_batch(films[:2]))
    np.testing.assert_allclose(loaded(x)[0].detach().numpy(), pred.forward_uint8(pred.to_uint8_batch(films[:2]))
                               ["logits"], atol=1e-5)


def test_load_predictor_errors(tmp_path):
    b = _bundle(tmp_path / "b")
    with pytest.raises(BackendError, match="cxr export"):
        load_predictor(b, "onnx")
    with pytest.raises(BackendError, match="unknown backend"):
        load_predictor(b, "tensorrt")
    with pytest.raises(BackendError, match="precision"):
        load_predictor(b, "torch", precision="int4")
    bf16 = load_predictor(b, "torch", precision="bf16")
    assert bf16.amp_dtype == torch.bfloat16


def test_cli_export_and_predict_with_onnx_backend(tmp_path, shared_data):
    from cxrkit.cli import build_app

    app = build_app(stages=("cxrkit.deploy.cli",))
    b = _bundle(tmp_path / "b")
    runner = CliRunner()
    res = runner.invoke(app, ["export", str(b), "--format", "onnx"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)[0]["max_abs_diff"] <= 1e-4
    out = tmp_path / "r.jsonl"
    img = sorted((shared_data / "nih-sample" / "images").glob("*.png"))[0]
    res = runner.invoke(app, ["predict", str(b), str(img), "--out", str(out), "--backend", "onnx"])
    assert res.exit_code == 0, res.output
    row = json.loads(out.read_text())
    ref = load_bundle(b).predict([read_image(img)])[0]
    assert max(abs(row["probs"][n] - p) for n, p in zip(NIH_FINDINGS, ref)) <= 1e-4
