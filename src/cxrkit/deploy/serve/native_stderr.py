"""Keep the C decoders' chatter out of the service log.

libpng and libjpeg (inside OpenCV) print warnings such as ``libpng warning: iCCP: known incorrect sRGB profile`` or
``Corrupt JPEG data: 12 extraneous bytes before marker 0xd9`` straight to file descriptor 2, bypassing Python's
logging; a hostile client can fill the log with them (the upload is refused or decoded anyway, and the refusal
has its own log line). :func:`route_native_stderr`, called once by ``cxr serve`` before logging is configured,
points fd 2 at a pipe: lines that are decoder chatter become DEBUG records of the ``cxrkit.serve.decoders``
logger (so do the panic reports of pylibjpeg's Rust codecs, whose panics the decoder already turns into refusals),
every other line is copied unchanged to the real stderr (where Python's own logging now writes too).
"""
from __future__ import annotations

import logging
import os
import re
import sys
import threading

DECODER_CHATTER = re.compile(rb"^(libpng (warning|error)|Corrupt JPEG data|Premature end of JPEG file|"
                             rb"Invalid SOS parameters|Unsupported marker type|Warning: unknown JFIF revision|"
                             rb"JPEG datastream contains no image|Not a JPEG file|Bogus marker length)")
RUST_PANIC = re.compile(rb"^thread '[^']*' panicked at ")
log = logging.getLogger("cxrkit.serve.decoders")


def route_native_stderr() -> None:
    """Point fd 2 at a filtering pipe (see the module docstring); Python's ``sys.stderr`` keeps the real one."""
    # pylibjpeg's Rust decoders report a panic (caught and refused as bad input) on stderr; no backtraces.
    os.environ["RUST_BACKTRACE"] = "0"
    real = os.dup(2)
    sys.stderr.flush()
    sys.stderr = os.fdopen(real, "w", buffering=1, encoding=sys.stderr.encoding or "utf-8",
                           errors="backslashreplace")
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)
    threading.Thread(target=_pump, args=(read_end, real), name="cxr-native-stderr", daemon=True).start()


def _pump(read_end: int, real: int) -> None:
    in_panic = False  # a Rust codec plugin's panic report: "thread '..' panicked at", message, "note: run with"
    with os.fdopen(read_end, "rb") as pipe:
        for line in iter(pipe.readline, b""):
            if RUST_PANIC.match(line):
                in_panic = True
            if in_panic or DECODER_CHATTER.match(line):
                log.debug("decoder: %s", line.rstrip().decode("utf-8", "backslashreplace"))
                in_panic = in_panic and not line.startswith(b"note: run with")
            else:
                os.write(real, line)
