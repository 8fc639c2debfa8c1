"""Streamed request-body size limit (pure ASGI middleware).

Starlette would spool a multipart body of any size to a temporary file before the endpoint runs, and
``Content-Length`` may lie or be absent (chunked transfer). So the limit is enforced on the bytes actually
received: a declared length over the limit is refused before reading, and the ``receive`` channel the app sees
counts every chunk and stops the request the moment the running total passes the limit.
"""
from __future__ import annotations

import asyncio
import time

from cxrkit.deploy.serve.errors import send_json_error

# After refusing, keep reading (and discarding) a little of the rest of the body so the client is not reset
# while it is still writing (a reset can destroy the 413 response before the client reads it); bounded in bytes
# and time so a never-ending chunked stream cannot hold the connection.
DRAIN_MAX_BYTES = 64 * 1024 * 1024
DRAIN_MAX_SECONDS = 2.0
DRAIN_IDLE_SECONDS = 0.2  # a client that has stopped sending is not waited for


class UploadTooLarge(Exception):
    """Raised inside the app's ``receive`` when the body passes the limit (turned into a 413 by the middleware)."""


class BodySizeLimit:
    """Refuse request bodies over ``max_bytes`` with 413, whatever ``Content-Length`` says."""

    def __init__(self, app, max_bytes: int):
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        self.app, self.max_bytes = app, int(max_bytes)

    def _message(self) -> str:
        mb = self.max_bytes / (1024 * 1024)
        return (f"upload too large: the request body is over the limit of {self.max_bytes} bytes ({mb:.1f} MB); "
                "send a smaller image or start the server with a larger --max-upload-mb")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or ()).get(b"content-length")
        if declared is not None:
            try:
                n = int(declared)
            except ValueError:
                return await send_json_error(send, 400, "invalid Content-Length header", close=True)
            if n > self.max_bytes:
                await _drain(receive)
                return await send_json_error(send, 413, self._message(), close=True)
        state = {"received": 0, "exceeded": False, "started": False, "done": False}

        async def counting_receive():
            if state["exceeded"]:
                raise UploadTooLarge(self._message())
            message = await receive()
            if message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
                state["done"] = not message.get("more_body", False)
                if state["received"] > self.max_bytes:
                    state["exceeded"] = True
                    raise UploadTooLarge(self._message())
            return message

        async def guarded_send(message):
            if state["exceeded"]:
                return  # whatever the app makes of the interrupted body, the answer is our 413
            if message["type"] == "http.response.start":
                state["started"] = True
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception:
            if not state["exceeded"]:
                raise
        if state["exceeded"] and not state["started"]:
            if not state["done"]:
                await _drain(receive)
            await send_json_error(send, 413, self._message(), close=True)


async def _drain(receive) -> None:
    """Read and drop what is left of a refused body, within DRAIN_MAX_BYTES / DRAIN_MAX_SECONDS, stopping as soon
    as the client pauses for DRAIN_IDLE_SECONDS."""
    got, end = 0, time.monotonic() + DRAIN_MAX_SECONDS
    while got < DRAIN_MAX_BYTES:
        left = end - time.monotonic()
        if left <= 0:
            return
        try:
            message = await asyncio.wait_for(receive(), min(left, DRAIN_IDLE_SECONDS))
        except (asyncio.TimeoutError, OSError):
            return
        if message["type"] != "http.request":
            return
        got += len(message.get("body", b""))
        if not message.get("more_body", False):
            return


class BodyTimedOut(Exception):
    """Raised inside the app's ``receive`` when the body is not received in time (turned into a 408)."""


class BodyReadTimeout:
    """Refuse with 408 a request whose body is not complete within ``total_s`` of the request's start, or that
    sends nothing for ``idle_s`` while the body is incomplete (a trickling client, or a Content-Length larger than
    what is sent). Only the body is timed: once its last chunk is in, ``receive`` is passed through untouched."""

    def __init__(self, app, total_s: float, idle_s: float):
        if not (total_s > 0 and idle_s > 0):
            raise ValueError(f"body timeouts must be positive, got {total_s}, {idle_s}")
        self.app, self.total_s, self.idle_s = app, float(total_s), float(idle_s)

    def _message(self, idle: bool) -> str:
        if idle:
            return (f"request body stalled: nothing received for {self.idle_s:g} s (the server's limit); "
                    "check Content-Length and send the whole body")
        return (f"request body not received within {self.total_s:g} s (the server's limit); send a smaller file or "
                "use a faster connection")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.total_s
        state = {"done": False, "timed_out": None, "started": False}

        async def timed_receive():
            if state["timed_out"] is not None:
                raise BodyTimedOut(state["timed_out"])
            if state["done"]:
                return await receive()
            left = deadline - loop.time()
            wait = min(self.idle_s, left)
            try:
                message = await asyncio.wait_for(receive(), max(wait, 0.0))
            except asyncio.TimeoutError:
                state["timed_out"] = self._message(idle=wait < left)
                raise BodyTimedOut(state["timed_out"]) from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                state["done"] = True
            return message

        async def guarded_send(message):
            if state["timed_out"] is not None:
                return  # the answer is our 408, whatever the app made of the interrupted body
            if message["type"] == "http.response.start":
                state["started"] = True
            await send(message)

        try:
            await self.app(scope, timed_receive, guarded_send)
        except Exception:
            if state["timed_out"] is None:
                raise
        if state["timed_out"] is not None and not state["started"]:
            await send_json_error(send, 408, state["timed_out"], close=True)


class ByteBudget:
    """A count of something in flight (bytes, heatmap slots) with a ceiling. Used from the event loop only, so a
    plain counter suffices: ``try_take(n)`` is False when taking ``n`` would pass the ceiling."""

    def __init__(self, limit: int):
        if limit < 1:
            raise ValueError(f"the limit must be positive, got {limit}")
        self.limit, self.used = int(limit), 0

    def try_take(self, n: int) -> bool:
        # One item is always admitted on an idle server, even when it alone is larger than the ceiling.
        if self.used and self.used + n > self.limit:
            return False
        self.used += n
        return True

    def give_back(self, n: int) -> None:
        self.used = max(0, self.used - n)
