"""`cxr bench serve` end to end, briefly: a real `cxr serve` subprocess on 127.0.0.1, real load, bounded."""
from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("fastapi")

from cxrkit.data.labels import NIH_FINDINGS  # noqa: E402


def test_bench_serve_runs_and_stops_by_itself(tmp_path, shared_data):
    from cxrkit.bundle import save_bundle
    from cxrkit.cli import main
    from cxrkit.models import create_model

    torch.manual_seed(0)
    bundle = save_bundle(tmp_path / "bundle", create_model("resnet10t", 14), label_names=NIH_FINDINGS,
                         input_size=64, preresize=64, mean=0.449, std=0.226)
    image = shared_data / "nih-sample" / "images" / "00000075_000.png"
    out = tmp_path / "bench.json"
    main(["bench", "serve", str(bundle), "--duration", "1", "--concurrency", "3", "--modes", "batched",
          "--max-requests", "200", "--image", str(image), "--out", str(out)])
    result = json.loads(out.read_text())["results"][0]
    assert result["ok"] == result["requests"] > 0 and not result["errors"]
    assert result["req_per_s"] > 0 and 0 < result["p50_ms"] <= result["p99_ms"]
    assert result["rss_max_mb"] > 50 and result["model_calls"] >= 1
    assert "| batched | 16 | 3 |" in out.with_suffix(".md").read_text()
