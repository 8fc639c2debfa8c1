"""The REST service end to end: a real uvicorn server on 127.0.0.1 (random port, in a thread), real HTTP via httpx,
a small random-init bundle (resnet10t, 64 px), real NIH PNG and DICOM files."""
from __future__ import annotations

import socket
import struct
import threading
import uuid
import zlib
from pathlib import Path

import httpx
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("fastapi")

from cxrkit import RESEARCH_NOTICE  # noqa: E402
from cxrkit.data.labels import NIH_FINDINGS  # noqa: E402
from cxrkit.deploy.serve.app import create_app  # noqa: E402
from cxrkit.deploy.serve.live import serve_in_thread  # noqa: E402

KEY = "test-key-0123456789abcdef"
AUTH = {"X-API-Key": KEY}
LIMIT = 1024 * 1024  # 1 MB upload limit for these tests


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, make_tiny_bundle) -> Path:
    torch.set_num_threads(1)
    return make_tiny_bundle(tmp_path_factory.mktemp("serve") / "bundle")


@pytest.fixture(scope="module")
def server(bundle):
    app = create_app(bundle, api_key=KEY, max_upload_bytes=LIMIT, max_batch=8, max_wait_ms=30, timeout_s=30)
    with serve_in_thread(app) as url:
        yield url


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server, timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def nih_png(shared_data) -> bytes:
    return (shared_data / "nih-sample" / "images" / "00000075_000.png").read_bytes()


@pytest.fixture(scope="module")
def dicom(shared_data) -> bytes:
    return (shared_data / "dicom" / "cr_monochrome2_jpeg_baseline.dcm").read_bytes()


def _predict(client, data: bytes, name: str = "x.png", params: dict | None = None, headers=AUTH, field="file"):
    return client.post("/v1/predict", params=params or {}, files={field: (name, data, "application/octet-stream")},
                       headers=headers)


def _assert_error(r: httpx.Response, status: int, *words: str) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["status"] == status and isinstance(body["error"], str) and body["error"]
    for w in words:
        assert w.lower() in body["error"].lower(), body["error"]
    return body


# -- predictions -----------------------------------------------------------------------------------
def test_predict_real_png(client, nih_png):
    r = _predict(client, nih_png)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["notice"] == RESEARCH_NOTICE
    assert body["model_id"].startswith("sha256:") and body["model_version"]
    names = [f["name"] for f in body["findings"]]
    assert sorted(names) == sorted(NIH_FINDINGS)
    probs = [f["probability"] for f in body["findings"]]
    assert probs == sorted(probs, reverse=True) and all(0.0 <= p <= 1.0 for p in probs)
    for f in body["findings"]:
        assert f["positive"] == (f["probability"] >= f["threshold"])
    assert body["positive_findings"] == [f["name"] for f in body["findings"] if f["positive"]]
    assert 0.0 <= body["abnormality"] <= 1.0
    assert set(body["quality"]) >= {"ok", "score", "reason"}
    assert body["image"] == {"format": "png", "width": 256, "height": 256}
    assert body["heatmaps"] is None
    assert r.headers["x-request-id"] == body["request_id"]


def test_predict_matches_library_predictor(client, nih_png, bundle):
    """The service returns exactly what the bundle's predictor computes for the decoded file."""
    from cxrkit.bundle import load_bundle
    from cxrkit.data.decode import decode_bytes

    expected = load_bundle(bundle).predict([decode_bytes(nih_png)])[0]
    got = {f["name"]: f["probability"] for f in _predict(client, nih_png).json()["findings"]}
    for name, p in zip(NIH_FINDINGS, expected):
        assert got[name] == pytest.approx(float(p), abs=1e-5)


def test_predict_real_dicom_with_heatmaps(client, dicom):
    import base64

    import cv2
    import numpy as np

    r = _predict(client, dicom, "film.dcm", {"heatmap": "true", "findings": "Effusion,Mass"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["image"] == {"format": "dicom", "width": 1024, "height": 1024}
    assert sorted(f["name"] for f in body["findings"]) == ["Effusion", "Mass"]  # only the findings asked for
    assert body["findings"][0]["probability"] >= body["findings"][1]["probability"]
    hm = body["heatmaps"]
    assert set(hm["overlays"]) == {"Effusion", "Mass"} and hm["method"] == "cam"

    def decode(url: str):
        assert url.startswith("data:image/png;base64,")
        return cv2.imdecode(np.frombuffer(base64.b64decode(url.split(",", 1)[1]), np.uint8), cv2.IMREAD_UNCHANGED)

    assert decode(hm["image"]).shape == (512, 512)  # display size of the 1024-px film
    for name in ("Effusion", "Mass"):
        assert decode(hm["overlays"][name]).shape == (128, 128, 4)  # RGBA, scaled over the image by clients
    # A random model's CAM can be flat for some findings; over all 14 some must show heat.
    every = _predict(client, dicom, "film.dcm", {"heatmap": "true"}).json()["heatmaps"]["overlays"]
    assert len(every) == 14 and max(int(decode(u)[..., 3].max()) for u in every.values()) > 0


def test_unknown_finding_is_400(client, nih_png):
    _assert_error(_predict(client, nih_png, params={"findings": "Effusion,Broken_Leg"}), 400, "Broken_Leg",
                  "Atelectasis")


def test_model_endpoint(client):
    r = client.get("/v1/model", headers=AUTH)
    assert r.status_code == 200
    body = r.json()
    assert body["label_names"] == list(NIH_FINDINGS)
    assert set(body["thresholds"]) == set(NIH_FINDINGS)
    assert body["input"]["size"] == 64 and body["architecture"] == "resnet10t"
    assert body["notice"] == RESEARCH_NOTICE and "created" in body["provenance"]
    assert body["runtime"] == {"backend": "torch", "precision": "fp32", "device": "cpu"}


def test_health_and_ready(client):
    assert client.get("/healthz").json() == {"status": "ok", "auth_required": True}
    r = client.get("/readyz")
    assert r.status_code == 200 and r.json()["status"] == "ready"


# -- auth ------------------------------------------------------------------------------------------
def test_auth(client, nih_png):
    _assert_error(_predict(client, nih_png, headers={}), 401, "X-API-Key")
    _assert_error(_predict(client, nih_png, headers={"X-API-Key": "wrong-key-wrong-key"}), 403, "wrong")
    _assert_error(client.get("/v1/model"), 401)
    _assert_error(client.get("/metrics", headers={"X-API-Key": KEY[:-1]}), 403)
    assert client.get("/").status_code == 200  # the page itself is open; it asks for the key


# -- bad input: always 4xx with a message, never 5xx --------------------------------------------------
def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _bomb_png() -> bytes:
    """A valid little PNG whose IHDR claims 100000 x 100000 pixels (10 G pixels if decoded)."""
    ihdr = struct.pack(">IIBBBBB", 100000, 100000, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\0" * 1000))
            + _png_chunk(b"IEND", b""))


def test_decompression_bomb(client):
    _assert_error(_predict(client, _bomb_png()), 400, "100000 x 100000", "pixels")


def test_truncated_png(client, nih_png):
    _assert_error(_predict(client, nih_png[: len(nih_png) // 2]), 400, "truncated")


def test_fake_dicom(client):
    _assert_error(_predict(client, b"\0" * 128 + b"DICM" + b"garbage!" * 16, "fake.dcm"), 400, "DICOM")


def test_empty_upload(client):
    _assert_error(_predict(client, b""), 400, "empty")


def test_wrong_field_and_no_body(client, nih_png):
    _assert_error(_predict(client, nih_png, field="image"), 422, "'file'")
    _assert_error(client.post("/v1/predict", headers=AUTH), 422, "'file'")
    _assert_error(client.post("/v1/predict", headers={**AUTH, "content-type": "application/json"}, content=b"{}"),
                  422, "'file'")


def test_unsupported_types(client):
    _assert_error(_predict(client, b"GIF89a" + b"\0" * 100, "x.gif"), 415, "GIF", "accepted formats")
    _assert_error(_predict(client, b"just some text, not an image"), 415, "accepted formats")


def test_not_found_and_bad_query(client, nih_png):
    assert client.get("/v1/nothing", headers=AUTH).status_code == 404
    _assert_error(_predict(client, nih_png, params={"heatmap": "maybe"}), 422, "heatmap")


# -- upload size limit ----------------------------------------------------------------------------
def _multipart_parts(size: int):
    boundary = uuid.uuid4().hex
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.png\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode()
    return boundary, head, b"\x89PNG" + b"\0" * size, f"\r\n--{boundary}--\r\n".encode()


def test_413_honest_content_length(client):
    r = _predict(client, b"\x89PNG" + b"\0" * (2 * LIMIT))
    _assert_error(r, 413, "too large", str(LIMIT))


def test_413_chunked_without_content_length(client):
    boundary, head, body, tail = _multipart_parts(3 * LIMIT)
    sent = {"bytes": 0}

    def stream():
        yield head
        for i in range(0, len(body), 64 * 1024):
            sent["bytes"] += 64 * 1024
            yield body[i:i + 64 * 1024]
        yield tail

    r = client.post("/v1/predict", content=stream(),
                    headers={**AUTH, "content-type": f"multipart/form-data; boundary={boundary}"})
    assert r.request.headers.get("transfer-encoding") == "chunked" and "content-length" not in r.request.headers
    _assert_error(r, 413, "too large")


def _raw_request(url: str, headers: dict[str, str], chunks) -> bytes:
    host, port = url.rsplit("/", 1)[-1].split(":")
    with socket.create_connection((host, int(port)), timeout=20) as s:
        head = "POST /v1/predict HTTP/1.1\r\nHost: test\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        s.sendall((head + "\r\n").encode())
        try:
            for c in chunks:
                s.sendall(c)
        except OSError:
            pass  # the server may stop reading once it has refused the request
        data = b""
        try:
            while chunk := s.recv(65536):
                data += chunk
        except OSError:
            pass
    return data


def test_413_lying_content_length_over_limit(server):
    """A Content-Length claiming more than the limit is refused before any body byte is read."""
    boundary, head, _, tail = _multipart_parts(0)
    raw = _raw_request(server, {**AUTH, "Content-Type": f"multipart/form-data; boundary={boundary}",
                                "Content-Length": str(10 ** 10)}, [head, b"\0" * 1000, tail])
    assert raw.startswith(b"HTTP/1.1 413"), raw[:200]
    assert b"too large" in raw


def test_lying_content_length_under_limit_counted_not_trusted(bundle):
    """Through the ASGI interface the declared length can disagree with the body: the counter, not the header,
    decides (3 MB body declared as 100 bytes -> 413)."""
    import asyncio

    app = create_app(bundle, api_key=KEY, max_upload_bytes=LIMIT, warm_up=False)
    boundary, head, body, tail = _multipart_parts(3 * LIMIT)

    async def go():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            req = c.build_request("POST", "/v1/predict", content=head + body + tail,
                                  headers={**AUTH, "content-type": f"multipart/form-data; boundary={boundary}"})
            req.headers["content-length"] = "100"
            return await c.send(req)

    _assert_error(asyncio.run(go()), 413, "too large")


def test_smuggling_style_headers_are_4xx_and_server_survives(server, client, nih_png):
    boundary, head, body, tail = _multipart_parts(2 * LIMIT)
    chunked = [b"%x\r\n%s\r\n" % (len(p), p) for p in (head, body, tail)] + [b"0\r\n\r\n"]
    raw = _raw_request(server, {**AUTH, "Content-Type": f"multipart/form-data; boundary={boundary}",
                                "Content-Length": "100", "Transfer-Encoding": "chunked"}, chunked)
    status = int(raw.split(b" ", 2)[1])
    assert 400 <= status < 500, raw[:200]
    assert _predict(client, nih_png).status_code == 200


# -- metrics and micro-batching ------------------------------------------------------------------
def _metric_families(client) -> dict:
    from prometheus_client.parser import text_string_to_metric_families

    r = client.get("/metrics", headers=AUTH)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {f.name: f for f in text_string_to_metric_families(r.text)}


def test_metrics_parse(client, nih_png):
    _predict(client, nih_png)
    _predict(client, b"")
    fams = _metric_families(client)
    assert {"cxr_http_requests", "cxr_http_request_duration_seconds", "cxr_batch_size", "cxr_queue_depth",
            "cxr_model_inference_seconds"} <= set(fams)
    statuses = {s.labels["status"] for s in fams["cxr_http_requests"].samples if s.labels["endpoint"] == "/v1/predict"}
    assert {"200", "400"} <= statuses
    inf_count = [s.value for s in fams["cxr_model_inference_seconds"].samples if s.name.endswith("_count")]
    assert inf_count and inf_count[0] >= 1


def test_concurrent_requests_are_batched(client, server, nih_png):
    def batch_stats():
        samples = _metric_families(client)["cxr_batch_size"].samples
        count = next(s.value for s in samples if s.name.endswith("_count"))
        le1 = next(s.value for s in samples if s.name.endswith("_bucket") and s.labels["le"] == "1.0")
        return count, le1

    count0, le1_0 = batch_stats()
    n = 8
    barrier = threading.Barrier(n)
    codes = []

    def one():
        with httpx.Client(base_url=server, timeout=30) as c:
            barrier.wait()
            codes.append(_predict(c, nih_png).status_code)

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert codes == [200] * n
    count1, le1_1 = batch_stats()
    calls = count1 - count0
    assert 1 <= calls < n, f"{n} concurrent requests took {calls} model calls: nothing was batched"
    assert (count1 - le1_1) - (count0 - le1_0) >= 1  # at least one batch of size > 1 in the histogram


# -- timeouts, no-auth mode ------------------------------------------------------------------------
def test_timeout_is_504(bundle, nih_png):
    app = create_app(bundle, api_key=KEY, timeout_s=0.0001)
    with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=30) as c:
        _assert_error(_predict(c, nih_png), 504, "longer than")
        assert c.get("/healthz").status_code == 200


def test_no_auth_is_loopback_only(bundle, nih_png):
    import asyncio

    from cxrkit.deploy.serve.errors import ServeError

    with pytest.raises(ServeError, match="api_key"):
        create_app(bundle)
    app = create_app(bundle, allow_no_auth_localhost=True, warm_up=False)

    async def from_peer(host: str):
        transport = httpx.ASGITransport(app=app, client=(host, 5555))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            return await c.get("/v1/model")

    assert asyncio.run(from_peer("127.0.0.1")).status_code == 200
    _assert_error(asyncio.run(from_peer("10.1.2.3")), 403, "loopback")


# -- no PHI in logs or responses -------------------------------------------------------------------
def test_no_phi_in_logs_or_response(client, dicom, caplog):
    import io
    import logging

    import pydicom

    ds = pydicom.dcmread(io.BytesIO(dicom))
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = "Doe^Jane", "PHI-ID-4711", "19470101"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    with caplog.at_level(logging.DEBUG):
        r = _predict(client, buf.getvalue(), "Doe_Jane_PHI-ID-4711.dcm")
        _predict(client, b"\0" * 128 + b"DICM" + b"Doe^Jane", "Doe_Jane.dcm")
    assert r.status_code == 200, r.text
    text = "\n".join(rec.getMessage() for rec in caplog.records)
    assert f"request_id={r.json()['request_id']}" in text and "status=200" in text  # the request was logged...
    for phi in ("Doe", "Jane", "4711", "19470101"):  # ...without the file name or patient fields
        assert phi not in text and phi not in r.text


def test_not_started_is_503_and_app_can_be_served_twice(bundle, nih_png):
    import asyncio

    app = create_app(bundle, api_key=KEY, warm_up=False)

    async def without_lifespan():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as c:
            return await c.post("/v1/predict", files={"file": ("x.png", nih_png)}, headers=AUTH)

    _assert_error(asyncio.run(without_lifespan()), 503, "not running")
    for _ in range(2):  # executors and the batcher live per server run
        with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=30) as c:
            assert _predict(c, nih_png).status_code == 200


# -- quality gate verdicts ------------------------------------------------------------------------
def test_quality_gate_verdicts(tmp_path, shared_data, nih_png, make_tiny_bundle):
    """A bundle with a fitted gate: a held-out NIH film gets a score; the abdominal DICOM is flagged (header)."""
    import shutil

    from cxrkit.data.decode import read_image
    from cxrkit.deploy.quality import fit_quality_gate

    films = sorted((shared_data / "nih-sample" / "images").glob("*.png"))
    fit, held = films[1:21], films[0]  # films[0] is 00000075_000.png, not fitted on
    gated = make_tiny_bundle(tmp_path / "gated")
    fit_quality_gate(gated, [read_image(p) for p in fit], target_fpr=0.02, seed=0)
    with serve_in_thread(create_app(gated, api_key=KEY)) as url, httpx.Client(base_url=url, timeout=30) as c:
        film = _predict(c, held.read_bytes()).json()["quality"]
        abdomen = _predict(c, (shared_data / "dicom" / "not_chest_abdomen_ot.dcm").read_bytes(), "a.dcm").json()
        described = c.get("/v1/model", headers=AUTH).json()
    assert isinstance(film["score"], float) and film["reason"]
    assert abdomen["quality"]["ok"] is False and "DICOM header" in abdomen["quality"]["reason"]
    assert described["quality_gate"] == "lr-handcrafted"
    shutil.rmtree(gated, ignore_errors=True)


def test_heatmap_boxes_are_the_positive_findings_with_tuned_parameters(bundle, tmp_path, dicom):
    import base64
    import shutil

    import cv2
    import numpy as np

    from cxrkit.bundle import read_bundle_config, write_bundle_config

    tuned = tmp_path / "bundle"
    shutil.copytree(bundle, tuned)
    cfg = read_bundle_config(tuned)
    # (this random model's Consolidation and Pneumonia maps on the film have hot regions)
    cfg["thresholds"] = {n: (0.0 if n in ("Consolidation", "Pneumonia") else 1.01) for n in cfg["label_names"]}
    cfg["explain"] = {"boxes": {"cam": {"Consolidation": {"threshold": 0.9, "min_area_frac": 0.0, "max_boxes": 1}}}}
    write_bundle_config(tuned, cfg)
    with serve_in_thread(create_app(tuned, api_key=KEY, timeout_s=30)) as url, \
            httpx.Client(base_url=url, timeout=30) as c:
        body = _predict(c, dicom, "film.dcm", {"heatmap": "true", "findings": "Consolidation,Pneumonia,Mass"}).json()
    hm = body["heatmaps"]
    assert hm["method"] == "cam" and set(hm["boxes"]) == {"Consolidation", "Pneumonia"}  # positives only
    assert len(hm["boxes"]["Consolidation"]) == 1 and 1 <= len(hm["boxes"]["Pneumonia"]) <= 3  # tuned / default
    for name, boxes in hm["boxes"].items():
        alpha = cv2.imdecode(np.frombuffer(base64.b64decode(hm["overlays"][name].split(",", 1)[1]), np.uint8),
                             cv2.IMREAD_UNCHANGED)[..., 3].astype(float)
        f = alpha.shape[1] / body["image"]["width"]  # the overlay is the image at 128 px
        b = boxes[0]
        assert 0 <= b["x"] and 0 <= b["y"] and b["x"] + b["w"] <= 1024.5 and b["y"] + b["h"] <= 1024.5
        inside = alpha[int(b["y"] * f):int(np.ceil((b["y"] + b["h"]) * f)),
                       int(b["x"] * f):int(np.ceil((b["x"] + b["w"]) * f))]
        assert inside.max() >= 0.9 * alpha.max(), name  # the hottest box holds the map's peak, in image pixels
