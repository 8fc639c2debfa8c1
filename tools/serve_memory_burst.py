"""The memory figure of docs/benchmarks.md ("bytes in flight"): N concurrent uploads of a small PNG that decodes to
S x S pixels against a real `cxr serve` on 127.0.0.1, the server's RSS sampled every 50 ms.

    PYTHONPATH=src python tools/serve_memory_burst.py BUNDLE [--n 64] [--side 7000]

Run it with PYTHONPATH pointing at another checkout's src to measure that code (the before/after figures).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import subprocess
import sys
import time

import cv2
import numpy as np


def big_small_png(side: int) -> bytes:
    """A film-like gradient that PNG compresses to a few tens of KB whatever its size."""
    yy, xx = np.mgrid[0:side, 0:side]
    img = (60 + 120 * np.exp(-(((xx - side * 0.35) / (side * 0.18)) ** 2 + ((yy - side / 2) / (side * 0.3)) ** 2))
           ).astype(np.uint8)
    return cv2.imencode(".png", img, [cv2.IMWRITE_PNG_COMPRESSION, 9])[1].tobytes()


def main() -> None:
    import httpx

    from cxrkit.deploy.serve.bench_load import RssSampler, rss_bytes
    from cxrkit.deploy.serve.live import free_port, wait_until_up

    ap = argparse.ArgumentParser()
    ap.add_argument("bundle")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--side", type=int, default=7000)
    args = ap.parse_args()
    payload = big_small_png(args.side)
    port, key = free_port(), secrets.token_urlsafe(24)
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "cxrkit.cli", "serve", args.bundle, "--port", str(port),
                             "--log-level", "warning", "--timeout-s", "600"],
                            env={**os.environ, "CXR_API_KEY": key}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_until_up(url, 300, alive=lambda: proc.poll() is None)
        idle = rss_bytes(proc.pid)

        async def burst():
            async with httpx.AsyncClient(base_url=url, timeout=600, headers={"X-API-Key": key},
                                         limits=httpx.Limits(max_connections=args.n)) as client:
                return await asyncio.gather(*(client.post("/v1/predict", files={"file": ("big.png", payload)})
                                              for _ in range(args.n)))

        with RssSampler(proc.pid, 0.05) as sampler:
            t = time.perf_counter()
            responses = asyncio.run(burst())
            elapsed = time.perf_counter() - t
        peak = max(r for _, r in sampler.samples)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    mb = 1024 * 1024
    codes: dict[int, int] = {}
    for r in responses:
        codes[r.status_code] = codes.get(r.status_code, 0) + 1
    print(json.dumps({"uploads": args.n, "png_bytes": len(payload), "decodes_to": f"{args.side} x {args.side}",
                      "rss_idle_mb": round(idle / mb, 1), "rss_peak_mb": round(peak / mb, 1),
                      "per_upload_mb": round((peak - idle) / mb / args.n, 2), "statuses": codes,
                      "elapsed_s": round(elapsed, 1)}))


if __name__ == "__main__":
    main()
