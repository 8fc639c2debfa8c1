"""`cxr bench serve`: sustained load on a real `cxr serve` process over loopback, micro-batching on vs off.

Each mode starts its own server subprocess (so its memory is measured alone), drives it with ``concurrency``
clients sending the same image back to back for ``duration_s`` (or ``max_requests``), samples the server's RSS,
reads its batch-size histogram from /metrics, and stops it. Loopback only; bounded in time and count.
"""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from cxrkit.deploy.serve.errors import ServeError
from cxrkit.deploy.serve.live import free_port, wait_until_up

HOST = "127.0.0.1"


def rss_bytes(pid: int) -> int | None:
    """Resident set size of a process (Linux /proc; None elsewhere or when it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class RssSampler:
    """Samples a process's RSS every ``interval_s`` in a thread until stopped."""

    def __init__(self, pid: int, interval_s: float = 0.5):
        self.pid, self.interval, self.samples = pid, interval_s, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        t0 = time.monotonic()
        while not self._stop.is_set():
            rss = rss_bytes(self.pid)
            if rss is not None:
                self.samples.append((time.monotonic() - t0, rss))
            self._stop.wait(self.interval)

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def synthetic_film_png(size: int = 1024, seed: int = 0) -> bytes:
    """A film-like 8-bit grey PNG (smooth anatomy-ish gradients + noise) for when no image is given."""
    import cv2

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    lungs = np.exp(-(((xx - 0.3) / 0.15) ** 2 + ((yy - 0.5) / 0.3) ** 2)) + \
        np.exp(-(((xx - 0.7) / 0.15) ** 2 + ((yy - 0.5) / 0.3) ** 2))
    img = 200 - 120 * lungs + rng.normal(0, 6, (size, size))
    ok, buf = cv2.imencode(".png", np.clip(img, 0, 255).astype(np.uint8))
    return buf.tobytes()


def start_server(bundle: Path, port: int, *, max_batch: int, max_wait_ms: float, backend: str,
                 timeout_s: float, device: str = "cpu", precision: str = "fp32",
                 start_timeout_s: float = 180.0) -> subprocess.Popen:
    """`cxr serve` on 127.0.0.1 without auth (loopback only), waited for until ready."""
    cmd = [sys.executable, "-m", "cxrkit.cli", "serve", str(bundle), "--host", HOST, "--port", str(port),
           "--no-auth", "--max-batch", str(max_batch), "--max-wait-ms", str(max_wait_ms), "--backend", backend,
           "--timeout-s", str(timeout_s), "--device", device, "--precision", precision, "--log-level", "warning"]
    env = {k: v for k, v in os.environ.items() if k != "CXR_API_KEY"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_until_up(f"http://{HOST}:{port}", start_timeout_s, alive=lambda: proc.poll() is None)
    except ServeError as exc:
        stop_server(proc)
        err = proc.stderr.read().decode(errors="replace")[-2000:] if proc.stderr else ""
        raise ServeError(f"{exc}\n{err}") from None
    return proc


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


async def _drive(url: str, image: bytes, concurrency: int, duration_s: float, max_requests: int,
                 request_timeout_s: float) -> tuple[list[float], dict[int, int], float]:
    import httpx

    latencies: list[float] = []
    statuses: dict[int, int] = {}
    sent = 0
    start = time.perf_counter()
    stop_at = start + duration_s
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=request_timeout_s, limits=limits) as client:
        async def worker() -> None:
            nonlocal sent
            while time.perf_counter() < stop_at and sent < max_requests:
                sent += 1
                t = time.perf_counter()
                try:
                    r = await client.post("/v1/predict", files={"file": ("film.png", image, "image/png")})
                    code = r.status_code
                except httpx.HTTPError:
                    code = 0  # transport failure
                latencies.append(time.perf_counter() - t)
                statuses[code] = statuses.get(code, 0) + 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, statuses, time.perf_counter() - start


def _batch_stats(metrics_text: str) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    total = count = 0.0
    for fam in text_string_to_metric_families(metrics_text):
        if fam.name == "cxr_batch_size":
            for s in fam.samples:
                if s.name.endswith("_sum"):
                    total = s.value
                elif s.name.endswith("_count"):
                    count = s.value
    return {"model_calls": count, "mean_batch": total / count if count else 0.0}


def run_mode(bundle: Path, image: bytes, *, max_batch: int, max_wait_ms: float, concurrency: int,
             duration_s: float, max_requests: int, backend: str = "torch", device: str = "cpu",
             precision: str = "fp32", warmup_s: float = 2.0) -> dict[str, Any]:
    """One server, one load run; returns throughput, latency percentiles, batch sizes and RSS."""
    import httpx

    port = free_port(HOST)
    url = f"http://{HOST}:{port}"
    proc = start_server(bundle, port, max_batch=max_batch, max_wait_ms=max_wait_ms, backend=backend,
                        timeout_s=max(30.0, duration_s), device=device, precision=precision)
    try:
        rss_start = rss_bytes(proc.pid)
        if warmup_s > 0:  # first requests pay for allocator growth and thread start-up
            asyncio.run(_drive(url, image, concurrency, warmup_s, 10 * concurrency, 60.0))
        before = _batch_stats(httpx.get(url + "/metrics", timeout=10).text)
        with RssSampler(proc.pid) as sampler:
            lat, statuses, elapsed = asyncio.run(_drive(url, image, concurrency, duration_s, max_requests,
                                                        max(30.0, duration_s)))
        after = _batch_stats(httpx.get(url + "/metrics", timeout=10).text)
    finally:
        stop_server(proc)
    ok = statuses.get(200, 0)
    lat_ms = np.array(lat) * 1000.0 if lat else np.zeros(1)
    calls = after["model_calls"] - before["model_calls"]
    rss = [r for _, r in sampler.samples] or [0]
    mb = 1024 * 1024
    return {
        "max_batch": max_batch, "max_wait_ms": max_wait_ms, "concurrency": concurrency, "backend": backend,
        "device": device, "precision": precision,
        "duration_s": round(elapsed, 2), "requests": len(lat), "ok": ok,
        "errors": {str(k): v for k, v in statuses.items() if k != 200},
        "req_per_s": round(ok / elapsed, 2) if elapsed else 0.0,
        "p50_ms": round(float(np.percentile(lat_ms, 50)), 1), "p99_ms": round(float(np.percentile(lat_ms, 99)), 1),
        "mean_batch": round((ok / calls) if calls else 0.0, 2), "model_calls": int(calls),
        "rss_start_mb": round((rss_start or 0) / mb, 1), "rss_max_mb": round(max(rss) / mb, 1),
        "rss_end_mb": round(rss[-1] / mb, 1),
        "rss_samples_mb": [round(r / mb, 1) for _, r in sampler.samples[:: max(1, len(sampler.samples) // 60)]],
    }


def markdown(results: list[dict[str, Any]], command: str, image_desc: str) -> str:
    """The table for docs/serve.md / docs/benchmarks.md."""
    lines = [f"Command: `{command}`  ", f"Image: {image_desc}  ", "",
             "| mode | max batch | concurrency | duration s | req/s | p50 ms | p99 ms | mean batch "
             "| RSS start / max / end MB | errors |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        mode = "batched" if r["max_batch"] > 1 else "unbatched"
        lines.append(f"| {mode} | {r['max_batch']} | {r['concurrency']} | {r['duration_s']} | {r['req_per_s']} | "
                     f"{r['p50_ms']} | {r['p99_ms']} | {r['mean_batch']} | {r['rss_start_mb']} / {r['rss_max_mb']} / "
                     f"{r['rss_end_mb']} | {r['errors'] or 0} |")
    return "\n".join(lines) + "\n"
