"""The service under fuzzing and sustained load: `cxr bench fuzz --target service` and `cxr bench soak`.

Both start a real `cxr serve` on 127.0.0.1 (random port, an API key in its environment), capture its log, and
stop it afterwards. :func:`fuzz_service` posts the mutated files of :mod:`cxrkit.data.fuzz` (a few at a time, 1 in
20 asking for heatmaps) and counts status codes: a 5xx, a transport error or a request over ``case_timeout_s``
is a failure, and so is a server that dies or stops answering ``/healthz``. :func:`soak` keeps ``clients`` clients
sending a mix of valid films (PNG, JPEG, DICOM), heatmap requests and bad files for ``duration_s``, samples the
server's RSS every second, and reports errors, latency and the memory trend; unexpected answers are anything but
200 for films, 400/415 for bad files, and 200 or the documented 503 (``--max-heatmaps``) for heatmap requests. Loopback only, bounded in time and count.
"""
from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
import tempfile
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from cxrkit.deploy.serve.bench_load import RssSampler, rss_bytes
from cxrkit.deploy.serve.errors import ServeError
from cxrkit.deploy.serve.live import free_port, wait_until_up

HOST = "127.0.0.1"
LOG_PROBLEMS = ("Traceback", " ERROR ", " CRITICAL ", "libpng", "Corrupt JPEG", "panicked")


@contextmanager
def running_server(bundle: Path, *extra: str, start_timeout_s: float = 180.0) -> Iterator[dict[str, Any]]:
    """`cxr serve BUNDLE` on a free loopback port with a random key; yields {url, key, proc, log (its path while it
    runs)}; once it has stopped, ``log_text`` holds the whole log."""
    port = free_port(HOST)
    key = secrets.token_urlsafe(24)
    env = {**os.environ, "CXR_API_KEY": key}
    with tempfile.TemporaryDirectory(prefix="cxr-serve-log-") as tmp:
        log_path = Path(tmp) / "server.log"
        with open(log_path, "wb") as log:
            cmd = [sys.executable, "-m", "cxrkit.cli", "serve", str(bundle), "--host", HOST, "--port", str(port),
                   "--log-level", "info", *extra]
            proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
            url = f"http://{HOST}:{port}"
            try:
                try:
                    wait_until_up(url, start_timeout_s, alive=lambda: proc.poll() is None)
                except ServeError as exc:
                    raise ServeError(f"{exc}\n{log_path.read_text(errors='replace')[-2000:]}") from None
                srv = {"url": url, "key": key, "proc": proc, "log": log_path, "log_text": ""}
                yield srv
            finally:
                if proc.poll() is None:
                    proc.terminate()
                    try:
                        proc.wait(timeout=30)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait(timeout=10)
                if "srv" in locals():
                    srv["log_text"] = log_path.read_text(errors="replace")


def log_summary(text: str) -> dict[str, Any]:
    """Lines of a server log, request lines, and any line that looks like a problem (tracebacks, ERROR, codec
    chatter), with up to 5 examples."""
    lines = text.splitlines()
    bad = [x for x in lines if any(p in x for p in LOG_PROBLEMS)]
    return {"log_lines": len(lines), "predict_lines": sum("endpoint=/v1/predict" in x for x in lines),
            "problem_lines": len(bad), "problem_examples": bad[:5]}


async def _post_cases(url: str, key: str, cases: Iterator[tuple[int, str, bytes]], concurrency: int,
                      case_timeout_s: float, stop_at: float) -> tuple[Counter, list[dict[str, Any]], int]:
    import httpx

    statuses: Counter = Counter()
    problems: list[dict[str, Any]] = []
    sent = 0
    lock = asyncio.Lock()
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=case_timeout_s, limits=limits,
                                 headers={"X-API-Key": key}) as client:
        async def worker() -> None:
            nonlocal sent
            while time.monotonic() < stop_at:
                async with lock:
                    item = next(cases, None)
                if item is None:
                    return
                index, name, data = item
                params = {"heatmap": "true"} if index % 20 == 0 else None
                try:
                    r = await client.post("/v1/predict", files={"file": ("upload", data)}, params=params)
                    code = r.status_code
                except httpx.TimeoutException:
                    code = "hang"
                except httpx.HTTPError as exc:
                    code = f"transport:{type(exc).__name__}"
                sent += 1
                statuses[str(code)] += 1
                if not str(code).isdigit() or int(code) >= 500:
                    problems.append({"index": index, "seed": name, "status": code})

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return statuses, problems, sent


def fuzz_service(bundle: Path, cases: int = 1000, *, seed: int = 0, time_limit_s: float = 600.0,
                 concurrency: int = 4, case_timeout_s: float = 60.0, extra_files: Sequence[str | os.PathLike] = (),
                 server_args: Sequence[str] = ()) -> dict[str, Any]:
    """Post up to ``cases`` mutated files to a real server (stopping after ``time_limit_s``); see the module
    docstring. Returns status counts, failures, whether the server stayed up, its RSS and its log summary."""
    import httpx

    from cxrkit.data.fuzz import build_seeds, make_case

    seeds = build_seeds(extra_files)
    generator = ((i, *make_case(seeds, seed, i)) for i in range(cases))
    with running_server(bundle, *server_args) as srv:
        rss_start = rss_bytes(srv["proc"].pid)
        start = time.monotonic()
        with RssSampler(srv["proc"].pid, 1.0) as sampler:
            statuses, problems, sent = asyncio.run(_post_cases(srv["url"], srv["key"], generator, concurrency,
                                                               case_timeout_s, start + time_limit_s))
        elapsed = time.monotonic() - start
        alive = srv["proc"].poll() is None
        try:
            healthy = httpx.get(srv["url"] + "/healthz", timeout=10).status_code == 200
        except httpx.HTTPError:
            healthy = False
        rss_end = rss_bytes(srv["proc"].pid)
    summary = log_summary(srv["log_text"])
    mb = 1024 * 1024
    fivexx = sum(n for s, n in statuses.items() if s.isdigit() and int(s) >= 500)
    return {
        "target": "service", "seed": seed, "cases": sent, "elapsed_s": round(elapsed, 1), "concurrency": concurrency,
        "statuses": dict(sorted(statuses.items())), "5xx": fivexx,
        "hangs": statuses.get("hang", 0), "transport_errors": sum(n for s, n in statuses.items()
                                                                  if s.startswith("transport")),
        "server_alive": alive, "healthz_after": healthy, "problems": problems[:50],
        "rss_start_mb": round((rss_start or 0) / mb, 1), "rss_end_mb": round((rss_end or 0) / mb, 1),
        "rss_max_mb": round(max([r for _, r in sampler.samples] or [0]) / mb, 1), **summary,
    }


# -- soak ---------------------------------------------------------------------------------------------------------
def soak_payloads(dicom: Path | None = None) -> list[tuple[str, bytes, dict | None]]:
    """(kind, bytes, query params) mix for the soak: valid films in each format, a heatmap request, bad files."""
    import cv2

    from cxrkit.deploy.serve.bench_load import synthetic_film_png

    png = synthetic_film_png(1024)
    film = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_GRAYSCALE)
    jpeg = cv2.imencode(".jpg", film, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
    mix = [("png", png, None), ("jpeg", jpeg, None), ("png", png, None), ("jpeg", jpeg, None),
           ("bad", b"not an image at all", None), ("bad", png[: len(png) // 2], None),
           ("heatmap", jpeg, {"heatmap": "true"})]
    if dicom is not None:
        data = Path(dicom).read_bytes()
        mix += [("dicom", data, None), ("dicom", data, None), ("bad", data[: len(data) // 2], None)]
    return mix


def soak(bundle: Path, *, clients: int = 8, duration_s: float = 600.0, dicom: Path | None = None,
         request_timeout_s: float = 60.0, server_args: Sequence[str] = ()) -> dict[str, Any]:
    """``clients`` clients for ``duration_s`` against a real server (see the module docstring)."""
    import httpx

    mix = soak_payloads(dicom)
    with running_server(bundle, *server_args) as srv:
        statuses: dict[str, Counter] = {}
        latencies: list[float] = []

        async def drive() -> None:
            stop_at = time.monotonic() + duration_s
            limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
            async with httpx.AsyncClient(base_url=srv["url"], timeout=request_timeout_s, limits=limits,
                                         headers={"X-API-Key": srv["key"]}) as client:
                async def worker(w: int) -> None:
                    i = w
                    while time.monotonic() < stop_at:
                        kind, data, params = mix[i % len(mix)]
                        i += clients
                        t = time.perf_counter()
                        try:
                            code = str((await client.post("/v1/predict", files={"file": ("f", data)},
                                                          params=params)).status_code)
                        except httpx.TimeoutException:
                            code = "hang"
                        except httpx.HTTPError as exc:
                            code = f"transport:{type(exc).__name__}"
                        if kind != "bad":
                            latencies.append(time.perf_counter() - t)
                        statuses.setdefault(kind, Counter())[code] += 1

                await asyncio.gather(*(worker(w) for w in range(clients)))

        rss_start = rss_bytes(srv["proc"].pid)
        with RssSampler(srv["proc"].pid, 1.0) as sampler:
            t0 = time.monotonic()
            asyncio.run(drive())
            elapsed = time.monotonic() - t0
        alive = srv["proc"].poll() is None
    mb = 1024 * 1024
    samples = np.array([(t, r / mb) for t, r in sampler.samples]) if sampler.samples else np.zeros((1, 2))
    half = samples[samples[:, 0] >= samples[-1, 0] / 2]
    slope = float(np.polyfit(half[:, 0] / 60.0, half[:, 1], 1)[0]) if len(half) > 2 else 0.0
    third = samples[samples[:, 0] >= samples[-1, 0] * 2 / 3]
    slope3 = float(np.polyfit(third[:, 0] / 60.0, third[:, 1], 1)[0]) if len(third) > 2 else 0.0
    minute = lambda a, b: float(np.median(samples[(samples[:, 0] >= a) & (samples[:, 0] < b), 1]))  # noqa: E731
    end = float(samples[-1, 0])
    # Bad files must be refused (400/415); heatmap requests beyond --max-heatmaps get the documented 503.
    expected = {"bad": {"400", "415"}, "heatmap": {"200", "503"}}
    errors = {kind: {c: n for c, n in counts.items() if c not in expected.get(kind, {"200"})}
              for kind, counts in statuses.items()}
    lat = np.array(latencies) * 1000.0 if latencies else np.zeros(1)
    return {
        "clients": clients, "duration_s": round(elapsed, 1), "requests": int(sum(sum(c.values())
                                                                              for c in statuses.values())),
        "statuses": {k: dict(v) for k, v in sorted(statuses.items())},
        "unexpected": {k: v for k, v in errors.items() if v}, "server_alive": alive,
        "p50_ms": round(float(np.percentile(lat, 50)), 1), "p99_ms": round(float(np.percentile(lat, 99)), 1),
        "rss_start_mb": round((rss_start or 0) / mb, 1), "rss_max_mb": round(float(samples[:, 1].max()), 1),
        "rss_first_minute_median_mb": round(minute(0, min(60.0, end / 2 or 1)), 1),
        "rss_last_minute_median_mb": round(minute(max(end - 60.0, end / 2), end + 1), 1),
        "rss_slope_second_half_mb_per_min": round(slope, 2), "rss_slope_last_third_mb_per_min": round(slope3, 2),
        "rss_samples_mb": [round(float(r), 1) for r in samples[:: max(1, len(samples) // 60), 1]],
        **log_summary(srv["log_text"]),
    }
