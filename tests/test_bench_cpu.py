"""`cxr bench infer --device cpu`'s repeated report: per round and backend, the ceiling and the folder throughput
with and without boxes come from the same fresh process, with their CPU time per film and the load."""
from __future__ import annotations

import shutil

import pytest

pytest.importorskip("onnxruntime")


@pytest.mark.slow
def test_repeated_report_has_folder_figures_with_and_without_boxes(make_tiny_bundle, shared_data, tmp_path):
    from cxrkit.deploy.bench_cpu import markdown, repeated_report

    bundle = make_tiny_bundle(tmp_path / "bundle", size=64)
    folder = tmp_path / "films"
    folder.mkdir()
    for p in sorted((shared_data / "nih-sample" / "images").glob("*.png"))[:3]:
        shutil.copy(p, folder / p.name)
    shutil.copy(shared_data / "dicom" / "cr_monochrome2_jpeg_baseline.dcm", folder / "chest.dcm")
    report = repeated_report(bundle, tmp_path / "work", folder=folder, rounds=2, n=4, size=64, folder_n=4,
                             threads=1, backends=["onnx-fp32"], batch_size=2, progress=lambda line: None)
    b = report["backends"]["onnx-fp32"]
    for key in ("ceiling_img_per_s", "folder_img_per_s", "folder_no_boxes_img_per_s", "ceiling_cpu_ms",
                "folder_cpu_ms", "folder_no_boxes_cpu_ms", "load_1m"):
        assert b[key]["min"] <= b[key]["median"] <= b[key]["max"], key
    for key in ("ceiling_img_per_s", "folder_img_per_s", "folder_no_boxes_img_per_s", "folder_cpu_ms"):
        assert b[key]["min"] > 0, key
    # each ratio is a same-process ratio, kept per round with the load of that round
    assert len(b["per_round"]) == 2
    for m in b["per_round"]:
        assert m["folder_vs_ceiling"] == pytest.approx(m["folder_img_per_s"] / m["ceiling_img_per_s"], abs=2e-3)
        assert m["folder_no_boxes_vs_ceiling"] == pytest.approx(
            m["folder_no_boxes_img_per_s"] / m["ceiling_img_per_s"], abs=2e-3)
        assert m["load_1m"] >= 0
    table = markdown(report)
    assert "folder / ceiling, no boxes" in table and "| onnx-fp32 |" in table
    assert report["n_folder_films"] == 4 and report["rounds"] == 2
