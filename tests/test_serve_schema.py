"""The OpenAPI schema exercised by schemathesis against a live server: bounded examples per operation, no 5xx,
responses conform to the documented schema, status codes and content types."""
from __future__ import annotations

import pytest

pytest.importorskip("fastapi")
schemathesis = pytest.importorskip("schemathesis")
torch = pytest.importorskip("torch")

from hypothesis import HealthCheck, settings  # noqa: E402


KEY = "schema-key-0123456789abcdef"


@pytest.fixture(scope="module")
def live_url(tmp_path_factory, make_tiny_bundle):
    from cxrkit.deploy.serve.app import create_app
    from cxrkit.deploy.serve.live import serve_in_thread

    torch.set_num_threads(1)
    bundle = make_tiny_bundle(tmp_path_factory.mktemp("schema") / "bundle")
    app = create_app(bundle, api_key=KEY, max_upload_bytes=256 * 1024, max_wait_ms=1)
    with serve_in_thread(app) as url:
        yield url


def _operations(url: str):
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    return [result.ok() for result in schema.get_all_operations()]


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_openapi_conformance(live_url, mode):
    # Image bytes that satisfy the schema ("binary") are still refused when they are not a PNG/JPEG/DICOM, so
    # "schema-valid input must be accepted" does not apply to /v1/predict; every other check runs.
    from hypothesis import given
    from schemathesis import GenerationMode
    from schemathesis.checks import positive_data_acceptance

    operations = _operations(live_url)
    assert {op.label for op in operations} >= {"POST /v1/predict", "GET /v1/model", "GET /healthz", "GET /readyz",
                                               "GET /metrics"}
    statuses: list[int] = []
    for op in operations:
        if mode == "negative" and not list(op.iter_parameters()) and not op.get_request_payload_content_types():
            continue  # nothing to make invalid

        @given(case=op.as_strategy(generation_mode=GenerationMode(mode)))
        @settings(max_examples=15, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def check(case):
            response = case.call_and_validate(base_url=live_url, headers={"X-API-Key": KEY}, timeout=30,
                                              excluded_checks=[positive_data_acceptance])
            statuses.append(response.status_code)

        check()
    assert statuses and max(statuses) < 500
    if mode == "negative":
        assert min(statuses) >= 400  # invalid requests are refused (with a documented 4xx)
