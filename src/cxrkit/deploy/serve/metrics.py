"""Prometheus metrics of one app instance (its own registry: no process-global state) and the ASGI middleware
that times every request, gives it a request id and logs one PHI-free line per request."""
from __future__ import annotations

import logging
import time
import uuid

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

log = logging.getLogger("cxrkit.serve")

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
KNOWN_PATHS = ("/", "/healthz", "/readyz", "/metrics", "/v1/predict", "/v1/model", "/openapi.json", "/docs")


class ServeMetrics:
    """Request counts by endpoint and status, latency, batch size, queue depth and model inference time."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("cxr_http_requests", "HTTP requests by endpoint, method and status code",
                                ["endpoint", "method", "status"], registry=r)
        self.latency = Histogram("cxr_http_request_duration_seconds", "HTTP request latency (whole request)",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.upload_bytes = Counter("cxr_upload_bytes", "request body bytes received", registry=r)
        self.batch_size = Histogram("cxr_batch_size", "images per model call (dynamic micro-batching)",
                                    buckets=BATCH_BUCKETS, registry=r)
        self.queue_depth = Gauge("cxr_queue_depth", "requests waiting for the model", registry=r)
        self.inference = Histogram("cxr_model_inference_seconds", "model + quality gate time per batch",
                                   buckets=LATENCY_BUCKETS, registry=r)
        self.heatmap = Histogram("cxr_heatmap_seconds", "heatmap (CAM) time per request",
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.timeouts = Counter("cxr_request_timeouts", "predict requests that ran past --timeout-s", registry=r)
        self.ready = Gauge("cxr_model_ready", "1 once the model is loaded and warmed up", registry=r)

    def render(self) -> bytes:
        """The Prometheus text exposition of this registry."""
        return generate_latest(self.registry)


def endpoint_label(path: str) -> str:
    """Bounded label values: unknown paths (scanners, typos) all count as "other"."""
    if path in KNOWN_PATHS:
        return path
    return "/static" if path.startswith("/static/") else "other"


class RequestObserver:
    """Outermost middleware: request id (``X-Request-ID``), status/latency metrics and one log line per request.

    The log line holds only method, endpoint, status, body size, latency and request id: never file names, header
    values or DICOM fields (they can carry patient data).
    """

    def __init__(self, app, metrics: ServeMetrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        request_id = uuid.uuid4().hex[:16]
        scope.setdefault("state", {})["request_id"] = request_id
        seen = {"status": 500, "bytes": 0}

        async def observed_receive():
            message = await receive()
            if message["type"] == "http.request":
                seen["bytes"] += len(message.get("body", b""))
            return message

        async def observed_send(message):
            if message["type"] == "http.response.start":
                seen["status"] = message["status"]
                message = {**message, "headers": [*message.get("headers", []),
                                                  (b"x-request-id", request_id.encode())]}
            await send(message)

        try:
            await self.app(scope, observed_receive, observed_send)
        finally:
            elapsed = time.perf_counter() - start
            endpoint = endpoint_label(scope.get("path", ""))
            self.metrics.requests.labels(endpoint, scope.get("method", ""), str(seen["status"])).inc()
            self.metrics.latency.labels(endpoint).observe(elapsed)
            self.metrics.upload_bytes.inc(seen["bytes"])
            log.info("request_id=%s method=%s endpoint=%s status=%s bytes_in=%d latency_ms=%.1f", request_id,
                     scope.get("method", ""), endpoint, seen["status"], seen["bytes"], elapsed * 1000)
