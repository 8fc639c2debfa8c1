"""The FastAPI app: ``create_app(predictor_or_bundle, ...)``. Endpoints: ``POST /v1/predict``, ``GET /v1/model``,
``GET /healthz``, ``GET /readyz``, ``GET /metrics`` and the web page at ``/``. See docs/serve.md."""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cxrkit import RESEARCH_NOTICE, __version__
from cxrkit.data.decode import DecodeLimits
from cxrkit.deploy.serve.errors import ServeError
from cxrkit.deploy.serve.web_page import PAGE_CSP, WEB_DIR  # noqa: F401 (WEB_DIR: kept importable from here)

log = logging.getLogger("cxrkit.serve")
MB = 1024 * 1024
CONFIG_ENV = "CXR_SERVE_CONFIG"  # JSON settings for worker processes started by `cxr serve --workers N`


NO_AUTH_WARNING = ("NO AUTHENTICATION (--no-auth): every connection that reaches this loopback port is served "
                   "without a key, including anything forwarded to it (ssh -L, socat, kubectl port-forward, a proxy on "
                   "this machine); use an API key unless you alone use this machine")


@dataclass(frozen=True)
class ServeSettings:
    """Service limits. ``max_pixels`` caps width x height (decompression bombs) before any decoding."""

    max_upload_bytes: int = 20 * MB
    max_batch: int = 16
    max_wait_ms: float = 10.0
    timeout_s: float = 30.0
    max_queue: int = 256
    max_pixels: int = 50_000_000
    decode_threads: int = 2
    # Bytes in flight: upload bodies held between reading and decoding (503 beyond); decoded images are shrunk
    # to a long side of decode_max_side right after decoding, so each queued image holds at most that squared.
    max_inflight_bytes: int = 256 * MB
    decode_max_side: int = 1024
    # Heatmaps run on their own thread and model copy; at most max_heatmaps at once (running or waiting), 503 beyond.
    max_heatmaps: int = 2
    # The body of a request must arrive within body_timeout_s, with no gap over body_idle_timeout_s (408).
    body_timeout_s: float = 60.0
    body_idle_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if min(self.max_upload_bytes, self.max_pixels, self.decode_threads, self.max_inflight_bytes,
               self.decode_max_side, self.max_heatmaps) < 1 or min(self.timeout_s, self.body_timeout_s,
                                                                  self.body_idle_timeout_s) <= 0:
            raise ServeError(f"invalid service limits {asdict(self)}: sizes, timeouts and threads must be positive")


def _load(predictor_or_bundle, backend: str, device: str, precision: str):
    if isinstance(predictor_or_bundle, (str, os.PathLike)):
        from cxrkit.deploy.runtime import load_fastest

        return load_fastest(Path(predictor_or_bundle), backend=backend, device=device, precision=precision)[0]
    return predictor_or_bundle


def create_app(predictor_or_bundle, *, api_key: str | None = None, allow_no_auth_localhost: bool = False,
               max_upload_bytes: int = 20 * MB, max_batch: int = 16, max_wait_ms: float = 10.0,
               timeout_s: float = 30.0, max_queue: int = 256, max_pixels: int = 50_000_000,
               backend: str = "auto", device: str = "cpu", precision: str = "auto", warm_up: bool = True,
               worklist_spool: str | os.PathLike | None = None, **limits):
    """Build the service around a loaded predictor (any :func:`cxrkit.deploy.load_predictor` result) or a bundle
    path, loaded with ``backend``/``device``/``precision`` by :func:`cxrkit.deploy.runtime.load_fastest` (``auto``:
    the fastest runtime this machine and bundle have; ``GET /v1/model`` reports the choice as ``runtime_choice``).

    ``api_key``: required in the ``X-API-Key`` header of every ``/v1/*`` and ``/metrics`` request. Without one the
    app is only built when ``allow_no_auth_localhost`` is set, and then answers loopback clients only.
    ``max_batch``/``max_wait_ms``: dynamic micro-batching (``max_batch=1``: off). ``timeout_s``: per predict request
    (504 after it). ``max_upload_bytes``: streamed body limit (413). ``warm_up``: run one inference at start-up
    before ``/readyz`` reports ready. ``worklist_spool``: a ``cxr node`` spool folder whose triaged worklist
    ``GET /v1/worklist`` serves (read-only; without one those endpoints answer 404). ``limits``: any other
    :class:`ServeSettings` field (bytes in flight, decode size, heatmap limit, body timeouts).
    """
    from fastapi import FastAPI

    from cxrkit.deploy.serve.auth import ApiKeyAuth
    from cxrkit.deploy.serve.batching import MicroBatcher
    from cxrkit.deploy.serve.engine import ModelService
    from cxrkit.deploy.serve.limits import BodyReadTimeout, BodySizeLimit, ByteBudget
    from cxrkit.deploy.serve.metrics import RequestObserver, ServeMetrics
    from cxrkit.deploy.serve.routes import add_handlers, add_routes
    from cxrkit.deploy.serve.worklist_routes import add_worklist_routes, check_spool

    if api_key is None and not allow_no_auth_localhost:
        raise ServeError("create_app needs an api_key (or allow_no_auth_localhost=True for a loopback-only server)")
    if api_key is None:
        log.warning(NO_AUTH_WARNING)
    settings = ServeSettings(max_upload_bytes=max_upload_bytes, max_batch=max_batch, max_wait_ms=max_wait_ms,
                             timeout_s=timeout_s, max_queue=max_queue, max_pixels=max_pixels, **limits)
    spool = check_spool(worklist_spool)
    metrics = ServeMetrics()
    service = ModelService(_load(predictor_or_bundle, backend, device, precision), metrics=metrics,
                           decode_limits=DecodeLimits(max_pixels=max_pixels, max_bytes=max_upload_bytes),
                           decode_max_side=settings.decode_max_side)
    batcher = MicroBatcher(service.run_batch, executor=None, max_batch=max_batch, max_wait_ms=max_wait_ms,
                           max_queue=max_queue, observe=metrics.batch_size.observe, on_depth=metrics.queue_depth.set)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        # One model thread: batches and heatmaps never run the network concurrently (Grad-CAM hooks are per model).
        # Pools live exactly as long as the server, so an app object can be served more than once.
        model_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cxr-model")
        decode_pool = ThreadPoolExecutor(max_workers=settings.decode_threads, thread_name_prefix="cxr-decode")
        # Heatmaps (seconds each) run on their own thread and model copy, so plain predictions never wait for them.
        heatmap_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cxr-heatmap")
        app.state.model_pool, app.state.decode_pool, batcher.executor = model_pool, decode_pool, model_pool
        app.state.heatmap_pool = heatmap_pool
        batcher.start()
        loop = asyncio.get_running_loop()

        async def warm():
            try:
                if warm_up:
                    await loop.run_in_executor(model_pool, service.warm_up)
                app.state.ready = True
                metrics.ready.set(1)
                log.info("model %s ready", service.id)
            except Exception:  # a model that cannot run stays not-ready; /readyz says so
                log.exception("warm-up inference failed; the server stays not ready")

        warm_task = loop.create_task(warm())
        try:
            yield
        finally:
            warm_task.cancel()
            app.state.ready = False
            metrics.ready.set(0)
            await batcher.stop()
            for pool in (model_pool, decode_pool, heatmap_pool):
                pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="cxrkit chest X-ray classifier", version=__version__,
                  description=f"Multi-label chest X-ray findings, quality gate and heatmaps.\n\n**{RESEARCH_NOTICE}**",
                  lifespan=lifespan)
    app.state.ready = False
    app.state.service, app.state.batcher, app.state.metrics, app.state.settings = service, batcher, metrics, settings
    app.state.model_pool = app.state.decode_pool = app.state.heatmap_pool = None  # set while serving (lifespan)
    app.state.upload_budget = ByteBudget(settings.max_inflight_bytes)
    app.state.heatmap_slots = ByteBudget(settings.max_heatmaps)
    app.state.api_key, app.state.worklist_spool = api_key, spool
    add_routes(app)
    add_worklist_routes(app)
    add_handlers(app)
    # Outermost first on the way in: observe (ids, metrics, logs) -> auth (before any body is read) -> size limit
    # -> body read timeout.
    app.add_middleware(BodyReadTimeout, total_s=settings.body_timeout_s, idle_s=settings.body_idle_timeout_s)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_upload_bytes)
    app.add_middleware(ApiKeyAuth, api_key=api_key)
    app.add_middleware(RequestObserver, metrics=metrics)
    return app


def app_from_env():
    """App factory for uvicorn worker processes (``cxr serve --workers N``): settings from ``$CXR_SERVE_CONFIG``,
    the key from ``$CXR_API_KEY``."""
    raw = os.environ.get(CONFIG_ENV)
    if not raw:
        raise ServeError(f"${CONFIG_ENV} is not set; start the server with `cxr serve`")
    cfg: dict[str, Any] = json.loads(raw)
    from cxrkit.deploy.serve.engine import quiet_decoder_logs

    quiet_decoder_logs()
    bundle = cfg.pop("bundle")
    key = None if cfg.pop("no_auth", False) else os.environ.get("CXR_API_KEY")
    return create_app(bundle, api_key=key, allow_no_auth_localhost=key is None, **cfg)

