"""Where the web page's files live and the Content-Security-Policy it is served with (shared by the app factory
and the routes; a module of its own so that neither imports the other)."""
from __future__ import annotations

from pathlib import Path

WEB_DIR = Path(__file__).with_name("web")
# The page is self-contained: scripts, styles and fetches only from this origin; images also from data: URLs.
PAGE_CSP = ("default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
            "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")
