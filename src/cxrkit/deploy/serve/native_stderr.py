"""Keep the C decoders' chatter out of the service log.

libpng and libjpeg (inside OpenCV) print warnings such as ``libpng warning: iCCP: known incorrect sRGB profile`` or
``Corrupt JPEG data: 12 extraneous bytes before marker 0xd9`` straight to file descriptor 2, bypassing Python's
logging; a hostile client can fill the log with them (the upload is refused or decoded anyway, and the refusal
has its own log line). :func:`route_native_stderr`, called once by ``cxr serve`` before logging is configured,
points fd 2 at a pipe: lines that are decoder chatter become DEBUG records of the ``cxrkit.serve.decoders``
logger, every other line is copied unchanged to the real stderr (where Python's own logging now writes too).
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
log = logging.getLogger("cxrkit.serve.decoders")


def route_native_stderr() -> None:
    """Point fd 2 at a filtering pipe (see the module docstring); Python's ``sys.stderr`` keeps the real one."""
    real = os.dup(2)
    sys.stderr.flush()
    sys.stderr = os.fdopen(real, "w", buffering=1, encoding=sys.stderr.encoding or "utf-8",
                           errors="backslashreplace")
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)
    threading.Thread(target=_pump, args=(read_end, real), name="cxr-native-stderr", daemon=True).start()


def _pump(read_end: int, real: int) -> None:
    with os.fdopen(read_end, "rb", buffering=0) as pipe:
        for line in iter(pipe.readline, b""):
            if DECODER_CHATTER.match(line):
                log.debug("decoder: %s", line.rstrip().decode("utf-8", "backslashreplace"))
            else:
                os.write(real, line)
