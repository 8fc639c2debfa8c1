"""The service under hostile clients, against a real `cxr serve` process on 127.0.0.1: header abuse, slow clients,
the connection bound, log hygiene, the key on the command line; and, in-process, heatmaps off the prediction path,
the --no-auth rule behind a TCP forward, and bytes in flight. Every socket is on loopback and bounded in time."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest

pytest.importorskip("fastapi")

from cxrkit.deploy.serve.bench_load import synthetic_film_png  # noqa: E402
from cxrkit.deploy.serve.live import free_port, serve_in_thread, wait_until_up  # noqa: E402

KEY = "hardening-test-key-0123456789"
HOST = "127.0.0.1"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, make_tiny_bundle) -> Path:
    return make_tiny_bundle(tmp_path_factory.mktemp("bundle"))


@contextlib.contextmanager
def real_server(bundle: Path, *extra: str, env_key: str | None = KEY, log_level: str = "info"):
    """`cxr serve` in a subprocess; yields (url, process, a list that collects its stderr lines)."""
    port = free_port(HOST)
    env = {k: v for k, v in os.environ.items() if k != "CXR_API_KEY"}
    if env_key:
        env["CXR_API_KEY"] = env_key
    cmd = [sys.executable, "-m", "cxrkit.cli", "serve", str(bundle), "--host", HOST, "--port", str(port),
           "--log-level", log_level, *extra]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: [lines.append(x.decode(errors="replace")) for x in proc.stderr],
                              daemon=True)
    reader.start()
    url = f"http://{HOST}:{port}"
    try:
        wait_until_up(url, 120, alive=lambda: proc.poll() is None)
        yield url, proc, lines
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        reader.join(timeout=5)


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def read_status(sock: socket.socket, timeout_s: float) -> int | None:
    """The status code of the response on ``sock`` (None: closed or reset without one, or nothing in time)."""
    sock.settimeout(timeout_s)
    data = b""
    try:
        while b"\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    except (socket.timeout, ConnectionResetError):
        pass
    return int(data.split()[1]) if data.startswith(b"HTTP/1.1 ") else None


def connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=5)


@pytest.fixture(scope="module")
def server(bundle):
    with real_server(bundle, "--header-timeout-s", "1", "--body-timeout-s", "2", "--max-connections", "40") as s:
        yield s


# -- 1. header size and count --------------------------------------------------------------------------------------
def test_oversized_header_is_refused_and_does_not_stall_the_server(server):
    url, proc, _ = server
    sock = connect(url)
    huge = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Junk: " + b"a" * (64 * 1024 * 1024)

    def send_huge():
        with contextlib.suppress(OSError):
            sock.sendall(huge)

    sender = threading.Thread(target=send_huge, daemon=True)
    sender.start()
    latencies = []
    for _ in range(10):
        t = time.perf_counter()
        assert httpx.get(url + "/healthz", timeout=10).status_code == 200
        latencies.append(time.perf_counter() - t)
    assert read_status(sock, 5) == 431
    sender.join(timeout=10)
    sock.close()
    assert max(latencies) < 1.0, latencies


def test_too_many_header_lines_are_refused(server):
    url, _, _ = server
    sock = connect(url)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(150)) + b"\r\n")
    assert read_status(sock, 5) == 431
    sock.close()
    # an ordinary request with a few dozen headers is fine
    headers = {f"X-Ok-{i}": "1" for i in range(40)}
    assert httpx.get(url + "/healthz", headers=headers, timeout=10).status_code == 200


# -- 2. read timeouts and the connection bound ---------------------------------------------------------------------
def test_trickled_headers_are_timed_out_and_release_their_descriptors(server):
    url, proc, _ = server
    base = open_fds(proc.pid)
    socks = [connect(url) for _ in range(30)]
    for s in socks:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    time.sleep(0.3)
    assert open_fds(proc.pid) >= base + 25  # they are held while within the limit ...
    for s in socks[:5]:
        s.sendall(b"a")  # ... and trickling bytes does not extend the header deadline
    statuses = [read_status(s, 5) for s in socks]
    assert statuses == [408] * 30
    for s in socks:
        s.close()
    deadline = time.monotonic() + 5
    while open_fds(proc.pid) > base + 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert open_fds(proc.pid) <= base + 2


def _post_head(length: int) -> bytes:
    return (f"POST /v1/predict HTTP/1.1\r\nHost: x\r\nX-API-Key: {KEY}\r\nContent-Type: multipart/form-data; "
            f"boundary=b\r\nContent-Length: {length}\r\n\r\n").encode()


def test_slow_body_is_timed_out(server):
    url, _, _ = server
    sock = connect(url)
    sock.sendall(_post_head(1000) + b"--b\r\n")
    t = time.perf_counter()
    status = None
    while time.perf_counter() - t < 8 and status is None:
        with contextlib.suppress(OSError):
            sock.sendall(b"x")  # 1 byte every 0.25 s: never idle, but far too slow
        status = read_status(sock, 0.25)
    assert status == 408 and time.perf_counter() - t < 5
    sock.close()


def test_content_length_larger_than_the_body_is_timed_out(server):
    url, _, _ = server
    sock = connect(url)
    sock.sendall(_post_head(100_000) + b"--b\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\nabc")
    t = time.perf_counter()
    assert read_status(sock, 8) == 408 and time.perf_counter() - t < 5
    sock.close()


def test_connections_beyond_the_bound_are_refused_at_once(server):
    url, proc, _ = server
    socks = [connect(url) for _ in range(60)]
    time.sleep(0.5)
    assert open_fds(proc.pid) < 40 + 30  # 40 held at most (plus the process's own descriptors)
    refused = [read_status(s, 0.2) for s in socks]
    assert refused.count(503) >= 15, refused
    for s in socks:
        s.close()
    time.sleep(0.3)
    assert httpx.get(url + "/healthz", timeout=10).status_code == 200


# -- 8. log hygiene, the key on the command line, two file fields --------------------------------------------------
def _bad_uploads() -> list[bytes]:
    import struct
    import zlib

    ok, png = cv2.imencode(".png", (np.arange(128 * 128) % 251).astype(np.uint8).reshape(128, 128))
    png = png.tobytes()

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    bad_iccp = png[:33] + chunk(b"iCCP", b"x" * 10 + b"\x00\x00garbage") + png[33:]
    rng = np.random.default_rng(3)
    ok, jpg = cv2.imencode(".jpg", (rng.random((128, 128)) * 255).astype(np.uint8))
    jpg = bytearray(jpg.tobytes())
    for pos in rng.integers(400, len(jpg) - 4, 6):
        jpg[pos] = 0x55
    return [bad_iccp, bytes(jpg), b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, b"x" * 300]


def test_bad_uploads_leave_one_log_line_each_and_no_decoder_noise(bundle, shared_data):
    dicom = (shared_data / "dicom" / "cr_monochrome2_jpeg_baseline.dcm").read_bytes()
    cut = dicom[: len(dicom) // 2]
    uploads = _bad_uploads() + [cut, dicom[:2000] + b"\x00" * 300]
    with real_server(bundle) as (url, _, lines):
        codes = []
        for data in uploads:
            r = httpx.post(url + "/v1/predict", headers={"X-API-Key": KEY}, files={"file": ("x", data)}, timeout=30)
            codes.append(r.status_code)
        time.sleep(0.5)
    assert all(c < 500 for c in codes), codes
    text = "".join(lines)
    for noise in ("libpng", "Corrupt JPEG", "Traceback", " ERROR ", "pydicom"):
        assert noise not in text, (noise, text[-3000:])
    request_lines = [x for x in lines if "endpoint=/v1/predict" in x]
    assert len(request_lines) == len(uploads)


def test_two_file_fields_are_refused(server):
    url, _, _ = server
    png = synthetic_film_png(64)
    r = httpx.post(url + "/v1/predict", headers={"X-API-Key": KEY}, timeout=30,
                   files=[("file", ("a.png", png)), ("file", ("b.png", png))])
    assert r.status_code == 400 and "more than one 'file' field" in r.json()["error"]


def test_api_key_file_and_the_command_line_warning(bundle, tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")
    with real_server(bundle, "--api-key-file", str(key_file), env_key=None) as (url, _, lines):
        assert httpx.get(url + "/v1/model", headers={"X-API-Key": KEY}, timeout=10).status_code == 200
        assert httpx.get(url + "/v1/model", timeout=10).status_code == 401
    assert not any("visible to other users" in x for x in lines)
    with real_server(bundle, "--api-key", KEY, env_key=None) as (url, _, lines):
        assert httpx.get(url + "/v1/model", headers={"X-API-Key": KEY}, timeout=10).status_code == 200
    assert any("visible to other users of this machine (ps)" in x for x in lines)


# -- 4. heatmaps have their own thread and limit -------------------------------------------------------------------
def test_plain_predictions_are_not_blocked_by_heatmaps(bundle):
    from cxrkit.deploy.serve.app import create_app

    app = create_app(bundle, api_key=KEY, max_heatmaps=1, timeout_s=60)
    release, started = threading.Event(), threading.Event()
    real = app.state.service.heatmaps

    def slow_heatmaps(image, names):
        started.set()
        release.wait(30)  # a heatmap that takes as long as the test wants
        return real(image, names)

    app.state.service.heatmaps = slow_heatmaps
    png = synthetic_film_png(256)
    with serve_in_thread(app) as url:
        def post(**params):
            return httpx.post(url + "/v1/predict", headers={"X-API-Key": KEY}, files={"file": ("f.png", png)},
                              params=params, timeout=60)

        box = {}
        slow = threading.Thread(target=lambda: box.update(r=post(heatmap="true")), daemon=True)
        slow.start()
        assert started.wait(20)
        t = time.perf_counter()
        plain = [post() for _ in range(3)]
        elapsed = time.perf_counter() - t
        second = post(heatmap="true")  # over the heatmap limit while the first runs
        release.set()
        slow.join(30)
    assert [r.status_code for r in plain] == [200, 200, 200] and elapsed < 10, elapsed
    assert second.status_code == 503 and "heatmap" in second.json()["error"]
    assert box["r"].status_code == 200 and box["r"].json()["heatmaps"]["overlays"]


def test_heatmaps_of_a_huge_image_are_drawn_at_model_resolution(bundle):
    from cxrkit.deploy.serve.app import create_app

    app = create_app(bundle, api_key=KEY, timeout_s=60)
    big = cv2.resize(cv2.imdecode(np.frombuffer(synthetic_film_png(512), np.uint8), 0), (7000, 7000))
    ok, png = cv2.imencode(".png", big)
    with serve_in_thread(app) as url:
        t = time.perf_counter()
        r = httpx.post(url + "/v1/predict", headers={"X-API-Key": KEY}, files={"file": ("f.png", png.tobytes())},
                       params={"heatmap": "true"}, timeout=60)
        elapsed = time.perf_counter() - t
    body = r.json()
    assert r.status_code == 200 and (body["image"]["width"], body["image"]["height"]) == (7000, 7000)
    assert len(body["heatmaps"]["overlays"]) == 14 and elapsed < 8, elapsed


# -- 3. bytes in flight ---------------------------------------------------------------------------------------------
def test_decoded_uploads_are_shrunk_to_the_decode_limit():
    from cxrkit.data.decode import DecodeLimits
    from cxrkit.deploy.serve.engine import decode_upload

    big = np.zeros((7000, 5000), np.uint8)
    big[1000:6000, 1000:4000] = 200
    ok, png = cv2.imencode(".png", big)
    image, meta = decode_upload(png.tobytes(), DecodeLimits(), 1024)
    assert image.shape == (1024, 731) and (meta["orig_width"], meta["orig_height"]) == (5000, 7000)
    small, _ = decode_upload(cv2.imencode(".png", big[:500, :400])[1].tobytes(), DecodeLimits(), 1024)
    assert small.shape == (500, 400)  # smaller images are left alone


def test_upload_bytes_in_flight_have_a_ceiling(bundle):
    from cxrkit.deploy.serve.app import create_app

    app = create_app(bundle, api_key=KEY, max_inflight_bytes=1_000_000, timeout_s=60, warm_up=False)
    release = threading.Event()
    real = app.state.service.run_batch

    def held_batch(items):
        release.wait(30)  # the model is busy: the first upload stays in flight
        return real(items)

    app.state.batcher.run_batch = held_batch
    payload = synthetic_film_png(1024)
    assert 500_000 < len(payload) < 1_000_000
    budget = app.state.upload_budget
    with serve_in_thread(app) as url:
        async def burst():
            async with httpx.AsyncClient(base_url=url, timeout=60) as client:
                async def one():
                    return (await client.post("/v1/predict", headers={"X-API-Key": KEY},
                                              files={"file": ("f.png", payload)})).status_code

                first = asyncio.ensure_future(one())
                for _ in range(400):
                    if budget.used:
                        break
                    await asyncio.sleep(0.05)
                others = await asyncio.gather(*(one() for _ in range(4)))
                release.set()
                return [await first, *others]

        codes = asyncio.run(burst())
    assert codes[0] == 200 and codes[1:] == [503] * 4, codes
    assert budget.used == 0


# -- 6. --no-auth behind a TCP forward ------------------------------------------------------------------------------
@contextlib.contextmanager
def tcp_forward(target_port: int):
    """A plain TCP port forward on loopback (what ssh -L or socat do): yields its port."""
    listener = socket.create_server((HOST, 0))
    port = listener.getsockname()[1]
    stop = threading.Event()

    def pipe(a, b):
        with contextlib.suppress(OSError):
            while chunk := a.recv(65536):
                b.sendall(chunk)
        with contextlib.suppress(OSError):
            b.shutdown(socket.SHUT_WR)

    def serve():
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                client, _ = listener.accept()
            except socket.timeout:
                continue
            upstream = socket.create_connection((HOST, target_port))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=pipe, args=(a, b), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield port
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def test_no_auth_warns_that_forwards_are_served_and_refuses_proxied_requests(bundle, caplog):
    from cxrkit.deploy.serve.app import create_app

    with caplog.at_level(logging.WARNING, logger="cxrkit.serve"):
        app = create_app(bundle, allow_no_auth_localhost=True)
    assert any("port-forward" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    port = free_port(HOST)
    with serve_in_thread(app, port=port), tcp_forward(port) as fwd:
        forwarded = f"http://{HOST}:{fwd}"
        # what docs/serve.md says: a TCP forward is indistinguishable from a local client and is served
        assert httpx.get(forwarded + "/v1/model", timeout=10).status_code == 200
        # an HTTP proxy says whom it forwards for: refused (uvicorn itself maps X-Forwarded-For to the client)
        assert httpx.get(forwarded + "/v1/model", headers={"X-Forwarded-For": "203.0.113.9"}, timeout=10).status_code == 403
        for header in ({"Forwarded": "for=203.0.113.9"}, {"X-Real-IP": "203.0.113.9"}):
            r = httpx.get(forwarded + "/v1/model", headers=header, timeout=10)
            assert r.status_code == 403 and "proxied" in r.json()["error"], header
        assert httpx.get(forwarded + "/healthz", timeout=10).json()["auth_required"] is False
