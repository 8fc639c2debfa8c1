"""CUDA paths of inference and the benchmarks (skipped without CUDA; run with `pytest -m gpu` on a GPU)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.gpu


def test_gpu_predictor_matches_cpu(tmp_path, make_tiny_bundle):
    from cxrkit.deploy.onnx_runtime import load_predictor

    bundle = make_tiny_bundle(tmp_path / "b")
    images = list(np.random.default_rng(0).integers(0, 256, (6, 80, 72), dtype=np.uint8))
    cpu = load_predictor(bundle, "torch", device="cpu").predict(images)
    fp32 = load_predictor(bundle, "torch", device="cuda", precision="fp32").predict(images)
    bf16 = load_predictor(bundle, "torch", device="cuda", precision="bf16", channels_last=True).predict(images)
    assert np.abs(fp32 - cpu).max() < 1e-3  # TF32 convolutions
    assert np.abs(bf16 - cpu).max() < 0.05


@pytest.mark.parametrize("compile_", [False, True])
def test_gpu_throughput_reports_both_paths(tmp_path, make_tiny_bundle, compile_):
    from cxrkit.deploy.bench import gpu_throughput

    r = gpu_throughput(make_tiny_bundle(tmp_path / "b"), batch_size=8, iters=3, compile=compile_, n_batches=2)
    for key in ("device_resident", "from_pinned_host"):
        assert r[key]["img_per_s"] > 0 and len(r[key]["rounds_img_per_s"]) == 3
    assert r["img_per_s"] == r["from_pinned_host"]["img_per_s"]
    assert r["gpu"] == torch.cuda.get_device_name()
