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


def test_ceiling_cpu_time_leaves_out_the_warm_up_batch():
    """OpenVINO compiles its batch buckets in the warm-up batch: that CPU time is not the network's per film."""
    import time

    import numpy as np

    from cxrkit.deploy.bench_cpu import batch_ceiling

    class Compiling:
        calls = 0

        def to_uint8_batch(self, squares):
            return squares

        def forward_uint8(self, batch):
            self.calls += 1
            end = time.process_time() + (0.4 if self.calls == 1 else 0.002 * len(batch))
            while time.process_time() < end:  # CPU, not sleep: process_time must see it
                pass
            return {}

    pred = Compiling()
    img_per_s, cpu_ms = batch_ceiling(pred, np.zeros((8, 4, 4), np.uint8), 4)
    assert pred.calls == 3  # the warm-up batch + two timed ones
    assert 1.5 <= cpu_ms < 20  # ~2 ms a film; with the warm-up counted it would be over 50
    assert img_per_s > 0
