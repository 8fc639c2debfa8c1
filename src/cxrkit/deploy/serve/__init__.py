"""The REST service: FastAPI app with dynamic micro-batching, API-key auth, streamed upload limits, Prometheus
metrics and a small web page. See docs/serve.md. ``create_app`` is imported lazily (FastAPI is an optional extra)."""
from __future__ import annotations


def __getattr__(name):
    if name in ("create_app", "ServeSettings"):
        from cxrkit.deploy.serve import app

        return getattr(app, name)
    if name == "ServeError":
        from cxrkit.deploy.serve.errors import ServeError

        return ServeError
    raise AttributeError(name)


__all__ = ["create_app", "ServeSettings", "ServeError"]
