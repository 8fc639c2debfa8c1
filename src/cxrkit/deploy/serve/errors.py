"""Errors of the REST service and the one JSON error shape every refusal uses."""
from __future__ import annotations

import json

from cxrkit.data.errors import CxrError


class ServeError(CxrError):
    """The service cannot start or run as configured (no API key, non-loopback host without auth, bad limits)."""


def error_body(status: int, message: str, **extra) -> bytes:
    """``{"error": message, "status": status, ...}`` as UTF-8 JSON: the body of every 4xx/5xx the service sends."""
    return json.dumps({"error": message, "status": status, **extra}).encode()


async def send_json_error(send, status: int, message: str, *, close: bool = False, headers=()) -> None:
    """Send a complete JSON error response on a raw ASGI ``send`` (for middleware that answers before the app)."""
    body = error_body(status, message)
    hdrs = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *headers]
    if close:
        hdrs.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": hdrs})
    await send({"type": "http.response.body", "body": body, "more_body": False})
