"""Short runs of the fuzz harness and the soak (`cxr bench fuzz`, `cxr bench soak`; the full-size figures are in
docs/benchmarks.md): the decoder and a real `cxr serve` on 127.0.0.1, bounded in count and time."""
from __future__ import annotations

from pathlib import Path

import pytest

from cxrkit.data.fuzz import build_seeds, fuzz_decode, make_case


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, make_tiny_bundle) -> Path:
    return make_tiny_bundle(tmp_path_factory.mktemp("bundle"))


def _real_dicom(request) -> list[Path]:
    try:
        return [request.getfixturevalue("shared_data") / "dicom" / "cr_monochrome2_jpeg_baseline.dcm"]
    except pytest.skip.Exception:
        return []


def test_cases_are_reproducible_and_cover_every_format():
    seeds = build_seeds()
    assert {n.split("_")[0] for n in seeds} == {"png", "jpeg", "dcm"}
    assert make_case(seeds, 3, 17) == make_case(seeds, 3, 17) != make_case(seeds, 3, 18)


def test_decode_fuzz_finds_no_crash_hang_or_stray_exception(request):
    result = fuzz_decode(400, seed=20261202, time_limit_s=120, extra_files=_real_dicom(request))
    assert result["cases"] == 400
    out = result["outcomes"]
    assert out["error"] == out["crash"] == out["hang"] == 0, result["problems"]
    assert out["ok"] > 20 and out["refused"] > 100  # mutations both pass and get refused
    assert set(result["by_format"]) == {"png", "jpeg", "dicom"}


def test_service_fuzz_gets_no_5xx_and_a_clean_log(bundle, request):
    pytest.importorskip("fastapi")
    from cxrkit.deploy.serve.fuzz_service import fuzz_service

    result = fuzz_service(bundle, 80, seed=7, time_limit_s=150, concurrency=3, extra_files=_real_dicom(request))
    assert result["cases"] == 80 and result["5xx"] == result["hangs"] == result["transport_errors"] == 0, result
    assert result["server_alive"] and result["healthz_after"]
    assert set(result["statuses"]) <= {"200", "400", "413", "415"} and "200" in result["statuses"]
    assert result["problem_lines"] == 0, result["problem_examples"]
    assert result["predict_lines"] == 80  # one log line per request


def test_short_soak_counts_no_unexpected_answer(bundle, request):
    pytest.importorskip("fastapi")
    from cxrkit.deploy.serve.fuzz_service import soak

    dicom = _real_dicom(request)
    result = soak(bundle, clients=2, duration_s=8, dicom=dicom[0] if dicom else None)
    assert result["server_alive"] and not result["unexpected"], result
    assert result["statuses"]["png"].get("200", 0) > 0 and result["statuses"]["bad"]
    assert result["rss_max_mb"] > 0 and len(result["rss_samples_mb"]) >= 5
    assert result["problem_lines"] == 0, result["problem_examples"]
