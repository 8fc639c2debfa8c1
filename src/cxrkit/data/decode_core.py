"""The building blocks of safe decoding that PNG/JPEG (:mod:`cxrkit.data.decode`) and DICOM
(:mod:`cxrkit.data.dicom`) share: the limits, format sniffing, header walks before any pixel is decoded, reading
a file within the size cap, and the intensity mappings onto uint8. The rules they enforce are described in
:mod:`cxrkit.data.decode`, which re-exports every public name here (this module exists so that ``decode`` and
``dicom`` need not import each other)."""
from __future__ import annotations

import os
import stat
import struct
from dataclasses import dataclass
from typing import Any, NamedTuple

import cv2
import numpy as np

from cxrkit.data.errors import CxrError, ImageError

FORMATS = ("png", "jpeg", "dicom")
MAX_JPEG_SCANS = 1000  # ordinary progressive JPEGs have about 10
# Header walks are Python loops over untrusted lengths; these caps keep them to milliseconds, far above what
# real files use (dozens of segments; PNG IDAT chunks are kilobytes, so 500 MB stays under 1M chunks).
MAX_JPEG_SEGMENTS = 10_000
MAX_PNG_CHUNKS = 1_000_000
_ALIASES = {"jpg": "jpeg", "dcm": "dicom"}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# JPEG frame headers: every SOFn except DHT (C4), JPG (C8) and DAC (CC).
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_PNG_COLOURS = {0: "grey", 2: "rgb", 3: "palette", 4: "grey+alpha", 6: "rgba"}
_PNG_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}
_JPEG_COLOURS = {1: "grey", 3: "ycbcr", 4: "cmyk"}
# Formats we recognise only to name them in the refusal.
_OTHER_MAGIC = (
    (b"GIF87a", "GIF"), (b"GIF89a", "GIF"), (b"BM", "BMP"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG 2000 (JP2)"), (b"\xff\x4f\xff\x51", "JPEG 2000 codestream"),
    (b"%PDF", "PDF"), (b"PK\x03\x04", "ZIP archive"), (b"\x1f\x8b", "gzip archive"),
)

@dataclass(frozen=True)
class DecodeLimits:
    """What the decoder accepts.

    ``max_pixels``: width x height cap, checked from the header before any pixel is decoded.
    ``max_bytes``: file size cap. ``formats``: accepted formats, a subset of ``("png", "jpeg", "dicom")``
    (``"jpg"``/``"dcm"`` are accepted as aliases).
    """

    max_pixels: int = 50_000_000
    max_bytes: int = 512 * 1024 * 1024
    formats: tuple[str, ...] = FORMATS

    def __post_init__(self) -> None:
        if isinstance(self.formats, str):
            raise CxrError(f"DecodeLimits.formats must be a tuple of names such as {FORMATS}, not a string")
        formats = tuple(_ALIASES.get(str(f).lower(), str(f).lower()) for f in self.formats)
        unknown = sorted(set(formats) - set(FORMATS))
        if unknown or not formats:
            raise CxrError(f"DecodeLimits.formats {self.formats!r} is invalid: choose one or more of {FORMATS}")
        if int(self.max_pixels) < 1 or int(self.max_bytes) < 1:
            raise CxrError("DecodeLimits.max_pixels and max_bytes must be positive integers")
        object.__setattr__(self, "formats", formats)


class ImageHeader(NamedTuple):
    """What the header says, read before decoding."""

    format: str
    width: int
    height: int
    bits: int
    colour: str


def sniff_format(data: bytes) -> str | None:
    """``"png"``, ``"jpeg"`` or ``"dicom"`` from the magic bytes at the start of ``data``; None otherwise."""
    if data.startswith(PNG_SIGNATURE):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if len(data) >= 132 and data[128:132] == b"DICM":
        return "dicom"
    return None


def _describe_unknown(data: bytes) -> str:
    for magic, what in _OTHER_MAGIC:
        if data.startswith(magic):
            return f"it is a {what} file"
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        return "it is a WebP file"
    vr = data[4:6]
    if len(data) >= 8 and data[:2] in (b"\x02\x00", b"\x08\x00") and (vr.isalpha() and vr.isupper() or data[3] == 0):
        # A group 0002/0008 tag at offset 0: DICOM written without the Part 10 preamble.
        return ("it looks like DICOM without the 128-byte preamble and 'DICM' prefix (not a DICOM Part 10 file); "
                "re-save it with a DICOM writer that writes the preamble")
    head = data[:16]
    return f"unrecognised content starting with {head!r}"


def _accepted(limits: DecodeLimits) -> str:
    return ", ".join(limits.formats)


def _png_header(data: bytes, where: str) -> ImageHeader:
    if len(data) < 33:
        raise ImageError(where, f"truncated PNG: {len(data)} bytes, too short for the IHDR header")
    length, ctype = struct.unpack(">I4s", data[8:16])
    if ctype != b"IHDR" or length != 13:
        raise ImageError(where, "corrupt PNG: the first chunk is not a 13-byte IHDR header")
    width, height, depth, colour = struct.unpack(">IIBB", data[16:26])
    if width == 0 or height == 0 or depth not in _PNG_DEPTHS.get(colour, ()):
        raise ImageError(where, f"corrupt PNG header: {width} x {height}, bit depth {depth}, colour type {colour}")
    return ImageHeader("png", width, height, depth, _PNG_COLOURS[colour])


def _check_png_chunks(data: bytes, where: str) -> None:
    # OpenCV allocates whatever a chunk's length field declares (a 200-byte file claiming a 3 GB IDAT chunk
    # costs 3 GB), so every chunk must fit inside the file before the decoder sees it. 8 bytes read per chunk.
    pos, n = 8, len(data)
    for _ in range(MAX_PNG_CHUNKS):
        if pos + 8 > n:
            break
        length, kind = struct.unpack_from(">I4s", data, pos)
        if length > 0x7FFFFFFF:
            raise ImageError(where, f"corrupt PNG: chunk at byte {pos} declares an impossible length {length}")
        end = pos + 12 + length
        if end > n:
            raise ImageError(where, f"truncated PNG: the {kind!r} chunk at byte {pos} needs {end} bytes but the file "
                                    f"ends after {n}")
        if kind == b"IEND":
            return
        pos = end
    else:
        raise ImageError(where, f"corrupt PNG: more than {MAX_PNG_CHUNKS} chunks")
    raise ImageError(where, f"truncated PNG: the file ends after {n} bytes without its IEND chunk")


def parse_jpeg_header(data: bytes, where: str, *, jpeg_ls: bool = False) -> ImageHeader:
    """Walk a JPEG stream's marker segments (lengths only, no pixel data) up to its frame header (SOF) and
    return width/height/precision/components; ``jpeg_ls`` also accepts JPEG-LS's SOF55. Raises ImageError."""
    if not data.startswith(b"\xff\xd8"):
        raise ImageError(where, "corrupt JPEG: the stream does not start with the SOI marker")
    sof_markers = _JPEG_SOF | {0xF7} if jpeg_ls else _JPEG_SOF
    i, n, segments = 2, len(data), 0
    while i + 4 <= n:
        segments += 1
        if segments > MAX_JPEG_SEGMENTS:
            raise ImageError(where, f"corrupt JPEG: more than {MAX_JPEG_SEGMENTS} segments before the frame header")
        if data[i] != 0xFF:
            raise ImageError(where, f"corrupt JPEG: expected a marker at byte {i}")
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0xD8 or marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length field
            i += 2
            continue
        if marker in (0xD9, 0xDA):
            raise ImageError(where, "corrupt JPEG: image data starts before any frame header (SOF)")
        seglen = int.from_bytes(data[i + 2 : i + 4], "big")
        if seglen < 2:
            raise ImageError(where, f"corrupt JPEG: segment at byte {i} has length {seglen}")
        if marker in sof_markers:
            if seglen < 8 or i + 10 > n:
                raise ImageError(where, "truncated JPEG: the frame header (SOF) is cut off")
            bits, height, width, comps = struct.unpack(">BHHB", data[i + 4 : i + 10])
            if width == 0 or height == 0:
                raise ImageError(where, f"unsupported JPEG: frame header says {width} x {height} pixels")
            return ImageHeader("jpeg", width, height, bits, _JPEG_COLOURS.get(comps, f"{comps} components"))
        i += 2 + seglen
    raise ImageError(where, "truncated JPEG: the file ends before the frame header (SOF)")


def read_header(data: bytes, where: str, limits: DecodeLimits) -> ImageHeader | None:
    """Sniff the format, enforce ``limits`` and return the PNG/JPEG header (None for DICOM, whose header
    is checked by :mod:`cxrkit.data.dicom` after parsing). Raises ImageError for anything refused."""
    if not data:
        raise ImageError(where, "empty file (0 bytes)")
    if len(data) > limits.max_bytes:
        raise ImageError(where, f"{len(data)} bytes is over the size limit of {limits.max_bytes} bytes "
                                "(DecodeLimits.max_bytes)")
    fmt = sniff_format(data)
    if fmt is None:
        raise ImageError(where, f"not an accepted image format: {_describe_unknown(data)}; accepted formats: "
                                f"{_accepted(limits)}")
    if fmt not in limits.formats:
        raise ImageError(where, f"{fmt} files are not accepted here; accepted formats: {_accepted(limits)}")
    if fmt == "dicom":
        return None
    header = _png_header(data, where) if fmt == "png" else parse_jpeg_header(data, where)
    check_pixels(header.width, header.height, where, limits)
    if fmt == "png":
        _check_png_chunks(data, where)
    elif data.count(b"\xff\xda") > MAX_JPEG_SCANS:
        # Each progressive scan is a full pass over the image: thousands of tiny scans are a CPU bomb.
        raise ImageError(where, f"JPEG has more than {MAX_JPEG_SCANS} scans; refusing it as a decoding bomb")
    return header


def check_pixels(width: int, height: int, where: str, limits: DecodeLimits) -> None:
    """Refuse an image whose header declares more than ``limits.max_pixels`` pixels (decompression bombs)."""
    if width * height > limits.max_pixels:
        raise ImageError(where, f"header declares {width} x {height} = {width * height} pixels, over the limit of "
                                f"{limits.max_pixels} (DecodeLimits.max_pixels); raise it if the file is genuine")


def robust_window(values: np.ndarray, *, mask: np.ndarray | None = None, low_pct: float = 0.5,
                  high_pct: float = 99.5) -> np.ndarray:
    """Map any numeric image onto uint8 by a robust min/max.

    The ``low_pct``/``high_pct`` percentiles of the values (ignoring pixels where ``mask`` is True, e.g.
    DICOM padding) become 0 and 255; values outside are clipped. Percentiles are estimated on at most ~1M
    evenly strided pixels. If they coincide the plain min/max is used; a constant image maps to all zeros.
    """
    sample = values[~mask] if mask is not None and not mask.all() else values.ravel()
    step = max(1, sample.size >> 20)
    sample = sample[::step]
    lo, hi = (float(v) for v in np.percentile(sample, [low_pct, high_pct]))
    if not hi > lo:
        lo, hi = float(sample.min()), float(sample.max())
    if not hi > lo:
        return np.zeros(values.shape, dtype=np.uint8)
    return scale_to_uint8(values, lo, hi)


def scale_to_uint8(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Linear map ``lo -> 0``, ``hi -> 255`` (either order), clipped and rounded to uint8."""
    out = (values.astype(np.float32) - np.float32(lo)) * np.float32(255.0 / (hi - lo))
    np.clip(out, 0.0, 255.0, out=out)
    out += 0.5
    return out.astype(np.uint8)


def to_grey(arr: np.ndarray, order: str = "bgr") -> np.ndarray:
    """Colour (H x W x C, ``order`` "bgr" as OpenCV decodes or "rgb" as pydicom does) -> H x W grey, same
    dtype family; alpha is dropped, 2-channel grey+alpha keeps channel 0."""
    if arr.ndim == 2:
        return arr
    channels = arr.shape[2]
    if channels == 1 or channels == 2:
        return np.ascontiguousarray(arr[:, :, 0])
    if arr.dtype not in (np.uint8, np.uint16, np.float32):
        arr = arr.astype(np.float32)
    if channels == 3:
        code = cv2.COLOR_BGR2GRAY if order == "bgr" else cv2.COLOR_RGB2GRAY
    else:
        code = cv2.COLOR_BGRA2GRAY if order == "bgr" else cv2.COLOR_RGBA2GRAY
        arr = np.ascontiguousarray(arr[:, :, :4])
    return cv2.cvtColor(arr, code)


def empty_meta(source_format: str) -> dict[str, Any]:
    """The metadata dict with every key present and unknown (None)."""
    return {"view": None, "sex": None, "age": None, "pixel_spacing": None, "modality": None, "body_part": None,
            "photometric": None, "bits_stored": None, "source_format": source_format, "frames": 1,
            "mapping": None}


def _file_kind(mode: int) -> str:
    kinds = ((stat.S_ISFIFO, "FIFO (named pipe)"), (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character device"),
             (stat.S_ISBLK, "block device"), (stat.S_ISDIR, "directory"))
    return next((name for test, name in kinds if test(mode)), "special file")


def read_file_bytes(path: os.PathLike | str, limits: DecodeLimits) -> bytes:
    """Read a whole file in one go, refusing missing/unreadable files and files over ``limits.max_bytes``
    before reading them."""
    where = os.fspath(path)
    try:
        # O_NONBLOCK: opening a FIFO without a writer would otherwise wait forever; regular files ignore it.
        fd = os.open(where, os.O_RDONLY | os.O_NONBLOCK)
        with open(fd, "rb") as fh:
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                raise ImageError(where, "is a directory, not an image file")
            if not stat.S_ISREG(st.st_mode):
                raise ImageError(where, f"not a regular file (it is a {_file_kind(st.st_mode)}); give image files")
            size = st.st_size
            if size > limits.max_bytes:
                raise ImageError(where, f"file is {size} bytes, over the size limit of {limits.max_bytes} bytes "
                                        "(DecodeLimits.max_bytes)")
            # Ask for what stat promised (+1 to notice growth): read(max_bytes) would allocate the whole cap per file.
            # Size 0 may be a /proc-like file, which says nothing about its length.
            return fh.read(size + 1 if size else limits.max_bytes + 1)
    except FileNotFoundError:
        if os.path.islink(where):
            raise ImageError(where, f"broken symbolic link: its target {os.readlink(where)!r} does not exist") \
                from None
        raise ImageError(where, "file not found; check the path") from None
    except IsADirectoryError:
        raise ImageError(where, "is a directory, not an image file") from None
    except PermissionError:
        raise ImageError(where, "permission denied; check the file's permissions") from None
    except OSError as exc:
        raise ImageError(where, f"cannot read the file ({exc.strerror or exc})") from None


__all__ = [
    "DecodeLimits", "ImageHeader", "FORMATS", "sniff_format", "parse_jpeg_header", "read_header", "check_pixels", "robust_window", "scale_to_uint8", "to_grey", "empty_meta", "read_file_bytes",
]
