"""The OpenAPI schema exercised by schemathesis against a live server: bounded examples per operation, no 5xx,
responses conform to the documented schema, status codes and content types."""
from __future__ import annotations

import pytest

pytest.importorskip("fastapi")
schemathesis = pytest.importorskip("schemathesis")
torch = pytest.importorskip("torch")

from hypothesis import HealthCheck, settings  # noqa: E402

from cxrkit.data.labels import NIH_FINDINGS  # noqa: E402

KEY = "schema-key-0123456789abcdef"


@pytest.fixture(scope="module")
def live_url(tmp_path_factory):
    from cxrkit.bundle import save_bundle
    from cxrkit.deploy.serve.app import create_app
    from cxrkit.deploy.serve.live import serve_in_thread
    from cxrkit.models import create_model

    torch.set_num_threads(1)
    torch.manual_seed(0)
    bundle = tmp_path_factory.mktemp("schema") / "bundle"
    save_bundle(bundle, create_model("resnet10t", 14), label_names=NIH_FINDINGS, input_size=64, preresize=64,
                mean=0.449, std=0.226)
    app = create_app(bundle, api_key=KEY, max_upload_bytes=256 * 1024, max_wait_ms=1)
    with serve_in_thread(app) as url:
        yield url


@pytest.fixture(scope="module")
def api_schema(live_url):
    return schemathesis.openapi.from_url(f"{live_url}/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=25, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.function_scoped_fixture])
def test_openapi_conformance(case, live_url):
    # Image bytes that satisfy the schema ("binary") are still refused when they are not a PNG/JPEG/DICOM, so
    # "schema-valid input must be accepted" does not apply to /v1/predict; everything else is checked.
    from schemathesis.checks import positive_data_acceptance

    case.call_and_validate(base_url=live_url, headers={"X-API-Key": KEY}, timeout=30,
                           excluded_checks=[positive_data_acceptance])
