"""API-key authentication (``X-API-Key`` header) and the no-auth-only-on-loopback rule.

Checked in a pure ASGI middleware, before the request body is read, so an unauthenticated client cannot make the
server receive and parse an upload. ``/``, the static page assets, ``/healthz``, ``/readyz`` and the API description
(``/openapi.json``, ``/docs``) stay open (probes, the page and the schema carry no data); everything else needs the
key.
"""
from __future__ import annotations

import hmac
import ipaddress
import os

from cxrkit.deploy.serve.errors import ServeError, send_json_error

API_KEY_HEADER = "X-API-Key"
API_KEY_ENV = "CXR_API_KEY"
OPEN_PATHS = frozenset({"/", "/healthz", "/readyz", "/favicon.ico", "/openapi.json", "/docs", "/docs/oauth2-redirect",
                        "/redoc"})
OPEN_PREFIXES = ("/static/",)
MIN_KEY_LENGTH = 16
PROXY_HEADERS = frozenset({b"forwarded", b"x-forwarded-for", b"x-real-ip"})


def is_loopback(host: str | None) -> bool:
    """True for ``localhost`` and loopback IPv4/IPv6 addresses (``127.0.0.0/8``, ``::1``)."""
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def resolve_api_key(api_key: str | None, *, no_auth: bool, host: str) -> str | None:
    """The key the server will require (``--api-key``, else ``$CXR_API_KEY``), or None for ``--no-auth``.

    Auth is on by default: without a key the server refuses to start, and ``--no-auth`` is accepted only when the
    server listens on a loopback address (only this machine, and whatever it forwards to that port, reaches it).
    """
    key = api_key or os.environ.get(API_KEY_ENV) or None
    if no_auth:
        if key:
            raise ServeError("both --no-auth and an API key were given; drop one of them")
        if not is_loopback(host):
            raise ServeError(f"--no-auth is only allowed when listening on a loopback address (127.0.0.1, ::1, "
                             f"localhost), not {host!r}; set an API key with --api-key or ${API_KEY_ENV}")
        return None
    if not key:
        raise ServeError(f"no API key: pass --api-key KEY or set ${API_KEY_ENV} (clients send it in the "
                         f"{API_KEY_HEADER} header); for local experiments only, --no-auth with --host 127.0.0.1")
    if len(key) < MIN_KEY_LENGTH:
        raise ServeError(f"the API key is too short ({len(key)} characters); use at least {MIN_KEY_LENGTH}, e.g. "
                         "`python -c \"import secrets; print(secrets.token_urlsafe(24))\"`")
    return key


def read_key_file(path) -> str:
    """The API key from the first line of a file (``--api-key-file``), so it never appears on a command line."""
    from pathlib import Path

    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise ServeError(f"--api-key-file {path}: cannot read it ({exc.strerror or exc})") from None
    key = lines[0].strip() if lines else ""
    if not key:
        raise ServeError(f"--api-key-file {path}: the file is empty; put the key on its first line")
    return key


def key_matches(expected: str, given: str | None) -> bool:
    """Constant-time comparison (no timing side channel on the key)."""
    return given is not None and hmac.compare_digest(expected.encode(), given.encode())


def is_open_path(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


class ApiKeyAuth:
    """401 without ``X-API-Key``, 403 with a wrong one. With ``api_key=None`` (``--no-auth``) requests from
    non-loopback peers and requests an HTTP proxy forwarded (they carry its ``Forwarded``-family headers) get
    403. A plain TCP forward (ssh -L, socat, kubectl port-forward) arrives from 127.0.0.1 and cannot be told
    apart from a local client: ``--no-auth`` serves it (the server logs a warning at start-up)."""

    def __init__(self, app, api_key: str | None):
        self.app, self.api_key = app, api_key

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or is_open_path(scope.get("path", "")):
            return await self.app(scope, receive, send)
        if self.api_key is None:
            client = scope.get("client")
            if not is_loopback(client[0] if client else None):
                return await send_json_error(send, 403, "this server runs without authentication and only answers "
                                                        "requests from the same machine (loopback)", close=True)
            if any(name in PROXY_HEADERS for name, _ in scope.get("headers") or ()):
                # An HTTP proxy on this machine says whom it forwards for; a plain TCP forward cannot be told apart
                # from a local client (docs/serve.md says so).
                return await send_json_error(send, 403, "this server runs without authentication and does not "
                                                        "answer proxied requests (Forwarded / X-Forwarded-For / "
                                                        "X-Real-IP); start it with an API key", close=True)
            return await self.app(scope, receive, send)
        given = None
        for name, value in scope.get("headers") or ():
            if name == API_KEY_HEADER.lower().encode():
                given = value.decode("latin-1")
                break
        if given is None:
            return await send_json_error(send, 401, f"missing API key: send it in the {API_KEY_HEADER} header",
                                         close=True, headers=[(b"www-authenticate", API_KEY_HEADER.encode())])
        if not key_matches(self.api_key, given):
            return await send_json_error(send, 403, f"wrong API key in the {API_KEY_HEADER} header", close=True)
        return await self.app(scope, receive, send)
