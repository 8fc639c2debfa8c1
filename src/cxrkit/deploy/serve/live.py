"""Run the service in a background thread of this process (notebooks, tests) or wait for one in another."""
from __future__ import annotations

import contextlib
import socket
import threading
import time
from typing import Iterator

from cxrkit.deploy.serve.errors import ServeError


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now on ``host`` (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve_in_thread(app, host: str = "127.0.0.1", port: int | None = None, *, start_timeout_s: float = 60.0,
                    ready: bool = True, log_level: str = "warning", http_limits=None) -> Iterator[str]:
    """Start uvicorn on ``host:port`` in a daemon thread, yield the base URL, stop it on exit. The connection
    limits are ``http_limits`` (:class:`~cxrkit.deploy.serve.protocol.HttpLimits`; default: its defaults).

    ``ready``: also wait until ``/readyz`` answers 200 (model warmed up). Bounded by ``start_timeout_s``.
    """
    import uvicorn

    from cxrkit.deploy.serve.protocol import HttpLimits, guarded_protocol

    port = port or free_port(host)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="on",
                                           access_log=False, http=guarded_protocol(http_limits or HttpLimits())))
    thread = threading.Thread(target=server.run, name=f"cxr-serve-{port}", daemon=True)
    thread.start()
    url = f"http://{host}:{port}"
    try:
        wait_until_up(url, start_timeout_s, ready=ready, alive=thread.is_alive)
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=15)


def wait_until_up(url: str, timeout_s: float, *, ready: bool = True, alive=lambda: True) -> None:
    """Poll ``/healthz`` (and ``/readyz`` when ``ready``) until 200; ServeError after ``timeout_s``."""
    import httpx

    path = "/readyz" if ready else "/healthz"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not alive():
            raise ServeError(f"the server at {url} stopped while starting")
        try:
            if httpx.get(url + path, timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise ServeError(f"the server at {url} was not {'ready' if ready else 'up'} within {timeout_s:g} s")
