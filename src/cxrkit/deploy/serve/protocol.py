"""Connection-level limits that uvicorn lacks: a bound on the request head (bytes and header lines), a deadline for
receiving it, and a bound on open connections.

Everything here happens before a request reaches the ASGI app (and so before the API key is checked): the HTTP
parser (httptools, uvicorn's default) accepts a header of any size, and its cost grows quadratically with it (a
64 MB header stalled the whole server for 10-40 s), and uvicorn has no timeout for a client that trickles its
headers (1,000 such connections held 1,000 file descriptors). So the protocol counts the bytes of each request head
before the parser sees them, arms a timer when it waits for a head, and refuses connections beyond the bound.

Use it as uvicorn's ``http`` setting: ``http=guarded_protocol(HttpLimits(...))`` (a picklable factory, so it also
works for ``--workers N``). The body is timed by :class:`cxrkit.deploy.serve.limits.BodyReadTimeout`, in the app.
"""
from __future__ import annotations

import functools
import logging
from dataclasses import asdict, dataclass

from uvicorn.protocols.http.auto import AutoHTTPProtocol

from cxrkit.deploy.serve.errors import ServeError, error_body

log = logging.getLogger("cxrkit.serve")
_HEAD_END = b"\r\n\r\n"


@dataclass(frozen=True)
class HttpLimits:
    """``max_header_bytes``: request line + headers of one request. ``max_headers``: header lines per request.
    ``header_timeout_s``: from the moment a connection waits for a request (opened, or its previous response
    sent) until that request's head is complete. ``max_connections``: open connections; more are answered 503 and
    closed at once."""

    max_header_bytes: int = 32 * 1024
    max_headers: int = 100
    header_timeout_s: float = 10.0
    max_connections: int = 512

    def __post_init__(self) -> None:
        if min(self.max_header_bytes, self.max_headers, self.max_connections) < 1 or not self.header_timeout_s > 0:
            raise ServeError(f"invalid HTTP limits {asdict(self)}: every limit must be positive")


def _raw_response(status: int, reason: str, message: str) -> bytes:
    body = error_body(status, message)
    head = (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            "connection: close\r\n\r\n")
    return head.encode("latin-1") + body


class GuardedHTTPProtocol(AutoHTTPProtocol):
    """uvicorn's HTTP/1.1 protocol (httptools, else h11) with :class:`HttpLimits` enforced in front of its parser."""

    def __init__(self, *args, limits: HttpLimits = HttpLimits(), **kwargs):
        super().__init__(*args, **kwargs)
        self.limits = limits
        self._in_head = False
        self._head_bytes = self._head_lines = 0
        self._tail = b""
        self._head_timer = None

    # -- asyncio protocol -----------------------------------------------------------------------
    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            self._refuse(503, "Service Unavailable", f"server busy: {self.limits.max_connections} connections "
                                                     "already open (the server's limit); retry shortly")
            return
        self._await_head()

    def data_received(self, data: bytes) -> None:
        if self._in_head and not self._count_head(data):
            return
        super().data_received(data)

    def connection_lost(self, exc) -> None:
        self._cancel_timer()
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._await_head()  # the next request on this keep-alive connection gets the same limits

    # -- limits ---------------------------------------------------------------------------------
    def _await_head(self) -> None:
        self._in_head, self._head_bytes, self._head_lines, self._tail = True, 0, 0, b""
        self._cancel_timer()
        self._head_timer = self.loop.call_later(self.limits.header_timeout_s, self._head_timed_out)

    def _count_head(self, data: bytes) -> bool:
        """Count ``data`` against the head limits; False when the request was refused. Linear in the data."""
        window = self._tail + data
        end = window.find(_HEAD_END)
        head_part = data if end < 0 else window[len(self._tail): end + 4]
        self._head_bytes += len(head_part)
        self._head_lines += head_part.count(b"\n")
        if self._head_bytes > self.limits.max_header_bytes or self._head_lines > self.limits.max_headers + 2:
            what = (f"more than {self.limits.max_header_bytes} bytes" if self._head_bytes > self.limits.max_header_bytes
                    else f"more than {self.limits.max_headers} header lines")
            self._refuse(431, "Request Header Fields Too Large", f"request headers too large: {what} (the server's "
                                                                 "limit); send fewer or shorter headers")
            return False
        if end >= 0:
            self._in_head = False
            self._cancel_timer()
        else:
            self._tail = window[-3:]
        return True

    def _head_timed_out(self) -> None:
        self._head_timer = None
        busy = self.cycle is not None and not self.cycle.response_complete
        if self._in_head and not busy and not self.transport.is_closing():
            self._refuse(408, "Request Timeout", f"request headers not received within "
                                                 f"{self.limits.header_timeout_s:g} s (the server's limit)")

    def _refuse(self, status: int, reason: str, message: str) -> None:
        log.info("connection refused: status=%d %s", status, message)
        self._in_head = False
        self._cancel_timer()
        if not self.transport.is_closing():
            self.transport.write(_raw_response(status, reason, message))
            self.transport.close()

    def _cancel_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None


def guarded_protocol(limits: HttpLimits) -> functools.partial:
    """The ``http`` argument for uvicorn: :class:`GuardedHTTPProtocol` with ``limits`` (picklable)."""
    return functools.partial(GuardedHTTPProtocol, limits=limits)
