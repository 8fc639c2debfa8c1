"""DICOM decoding (pydicom >= 3 + pylibjpeg plugins) to uint8 grey, and a PHI-free header summary.

Files must be DICOM Part 10 (128-byte preamble + ``DICM``): they are read with ``pydicom.dcmread`` without
``force``. Supported encodings are whatever pydicom's plugins decode: native, RLE, JPEG baseline/extended/lossless,
JPEG-LS and JPEG 2000. Multi-frame objects give their first frame (``meta["frames"]`` says how many there were).

Intensity policy for monochrome images, applied in the order of DICOM PS3.3 C.11:

1. **Modality LUT**: Modality LUT Sequence or Rescale Slope/Intercept (``pydicom.pixels.apply_modality_lut``).
2. **VOI**, the first that is present:

   * *VOI LUT Sequence* (first item, ``apply_voi``): its output is mapped linearly onto 0-255 using the range
     of the LUT's own entries (vendors often declare 16-bit entries but fill only 12 bits).
   * *Window Center/Width* (first pair, honouring VOI LUT Function LINEAR / LINEAR_EXACT / SIGMOID,
     ``apply_windowing``): the window's output range is mapped onto 0-255. An invalid window (width < 1)
     is ignored and the default below applies.
   * *Default*: unsigned data of at most 8 stored bits with no rescale is kept as stored (8 bits: identity;
     fewer bits: scaled to 0-255). Anything else (10-16-bit, signed, rescaled) gets a robust min/max window:
     the 0.5th and 99.5th percentiles of the modality values, ignoring Pixel Padding Value (/Range Limit)
     pixels, become 0 and 255 (:func:`cxrkit.data.decode.robust_window`).

3. **MONOCHROME1** is inverted last (``255 - x``) so that, as in MONOCHROME2, dense tissue is bright.

Colour images (RGB, YBR_* which pydicom converts to RGB, PALETTE COLOR through its palette) become grey with the
BT.601 luma weights; more than 8 bits per sample then get the robust window.
"""
from __future__ import annotations

import io
import os
import re
import struct
import zlib
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi, apply_windowing, pixel_array
from pydicom.pixels.decoders import RLELosslessDecoder
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian, JPEG2000TransferSyntaxes, JPEGLSTransferSyntaxes, JPEGTransferSyntaxes, RLELossless,
)

from cxrkit.data.decode_core import (
    DecodeLimits, check_pixels, empty_meta, parse_jpeg_header, read_file_bytes, read_header, robust_window,
    scale_to_uint8, to_grey,
)
from cxrkit.data.errors import ImageError

CHEST_MODALITIES = ("CR", "DX", "DR", "RG")
LATERAL_VIEWS = frozenset({"LL", "RL", "LAT", "LATERAL", "LEFT LATERAL", "RIGHT LATERAL"})
_CHEST_PARTS = ("CHEST", "THORAX", "LUNG")
_AGE = re.compile(r"^\s*(\d{1,3})\s*([DWMY]?)\s*$", re.IGNORECASE)
_PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"  # (7FE0,0010), little endian
_AGE_UNIT_YEARS = {"D": 1 / 365.25, "W": 7 / 365.25, "M": 1 / 12, "Y": 1.0, "": 1.0}


def decode_dicom(src: Dataset | bytes | os.PathLike | str, *, limits: DecodeLimits | None = None,
                 name: str | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Decode a DICOM image (a parsed ``Dataset``, the file's bytes, or its path) to ``(uint8 H x W, meta)``.

    ``meta`` is :func:`dicom_meta` plus ``mapping`` (how intensities became uint8, see the module docstring).
    Raises :class:`~cxrkit.data.errors.ImageError` for anything refused.
    """
    limits = limits or DecodeLimits()
    if isinstance(src, Dataset):
        where = name or str(getattr(src, "filename", None) or "<dataset>")
        if "dicom" not in limits.formats:
            raise ImageError(where, f"dicom files are not accepted here; accepted formats: {', '.join(limits.formats)}")
        return _decode_dataset(src, where, limits)
    if isinstance(src, (bytes, bytearray, memoryview)):
        data, where = bytes(src), name or "<bytes>"
    else:
        where = name or os.fspath(src)
        data = read_file_bytes(src, limits)
    header = read_header(data, where, limits)
    if header is not None:
        raise ImageError(where, f"this is a {header.format.upper()} file, not DICOM; use cxrkit.data.read_image")
    return decode_checked_bytes(data, where, limits)


def decode_checked_bytes(data: bytes, where: str, limits: DecodeLimits) -> tuple[np.ndarray, dict[str, Any]]:
    """Decode bytes that :func:`cxrkit.data.decode.read_header` already sniffed as DICOM and size-checked."""
    _check_deflated_size(data, where, limits)
    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except InvalidDicomError:
        raise ImageError(where, "not a DICOM Part 10 file: the 128-byte preamble and 'DICM' prefix are missing; "
                                "re-save it with a DICOM writer") from None
    except Exception as exc:  # pydicom raises many types on malformed headers; all mean "bad file"
        raise ImageError(where, f"unreadable DICOM header ({_describe(exc)})") from None
    if "PixelData" not in ds and _PIXEL_DATA_TAG in data:
        # pydicom silently drops a Pixel Data element that the file ends inside of
        raise ImageError(where, "truncated DICOM: the file ends inside its Pixel Data element; the file was cut "
                                "short or damaged in transfer; export it again from the source")
    return _decode_dataset(ds, where, limits)


def _check_deflated_size(data: bytes, where: str, limits: DecodeLimits) -> None:
    """pydicom inflates a Deflated Explicit VR dataset in one go; a small file can inflate to gigabytes, so
    inflate it once, stopping at ``limits.max_bytes``, before pydicom does."""
    # File meta starts at 132 with (0002,0000) UL: its 4-byte value is the length of the rest of group 0002.
    if data[132:138] != b"\x02\x00\x00\x00UL" or DeflatedExplicitVRLittleEndian.encode() not in data[132:1024]:
        return
    meta_end = 144 + int.from_bytes(data[140:144], "little")
    try:
        inflated = zlib.decompressobj(-zlib.MAX_WBITS).decompress(data[meta_end:], limits.max_bytes + 1)
    except zlib.error as exc:
        raise ImageError(where, f"corrupt deflated DICOM dataset ({exc})") from None
    if len(inflated) > limits.max_bytes:
        raise ImageError(where, f"deflated DICOM dataset inflates to more than {limits.max_bytes} bytes "
                                "(DecodeLimits.max_bytes); refusing it as a decompression bomb")


def _decode_dataset(ds: Dataset, where: str, limits: DecodeLimits) -> tuple[np.ndarray, dict[str, Any]]:
    try:
        meta = dicom_meta(ds)
        _check_image_object(ds, where, limits)
        _check_codestream(ds, where)
        image, mapping = _to_uint8(ds, where)
    except (ImageError, KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except BaseException as exc:  # noqa: BLE001
        # pydicom and its codec plugins raise many types on malformed pixel data; the Rust RLE plugin even
        # raises pyo3's PanicException, which derives from BaseException.
        raise ImageError(where, f"cannot decode the DICOM pixel data ({_syntax(ds)}; {_describe(exc)})") from None
    meta["mapping"] = mapping
    return np.ascontiguousarray(image), meta


def _check_image_object(ds: Dataset, where: str, limits: DecodeLimits) -> None:
    if "PixelData" not in ds:
        kind = "float pixel data is not supported" if ("FloatPixelData" in ds or "DoubleFloatPixelData" in ds) \
            else "it is not an image object (e.g. a report or presentation state)"
        raise ImageError(where, f"DICOM file has no Pixel Data element: {kind}")
    rows, cols = _get(ds, "Rows"), _get(ds, "Columns")
    if not isinstance(rows, int) or not isinstance(cols, int) or rows < 1 or cols < 1:
        raise ImageError(where, f"DICOM header has no valid Rows/Columns (Rows={rows!r}, Columns={cols!r})")
    check_pixels(cols, rows, where, limits)


def _check_codestream(ds: Dataset, where: str) -> None:
    """A JPEG / JPEG-LS / JPEG 2000 codec decodes to the size its own codestream header states, whatever Rows
    and Columns say: a tiny file could claim 64 x 64 and hold a 60000 x 60000 codestream. So the first frame's
    header must match the (already capped) Rows/Columns before any codec runs."""
    syntax = ds.file_meta.TransferSyntaxUID
    is_jpeg, is_jls, is_j2k = (syntax in JPEGTransferSyntaxes, syntax in JPEGLSTransferSyntaxes,
                               syntax in JPEG2000TransferSyntaxes)
    if not (is_jpeg or is_jls or is_j2k):
        return
    first = _first_frame(ds, syntax, where)
    if not first:
        raise ImageError(where, f"encapsulated pixel data ({syntax.name}) holds no image fragment")
    # The codecs fill whatever a cut-off codestream lacks with grey (even with 95% of it missing) and report
    # success, so a frame must end with its end marker: EOI for JPEG and JPEG-LS, EOC for JPEG 2000 (both FF D9),
    # followed at most by the zero padding that keeps DICOM items even-length.
    if not first.rstrip(b"\x00").endswith(b"\xff\xd9"):
        raise ImageError(where, f"truncated {syntax.name} pixel data: the first frame's codestream ends after "
                                f"{len(first)} bytes without its end marker (FF D9); the file was cut short or "
                                "damaged in transfer; export it again from the source")
    if is_j2k:
        start = first.find(b"\xff\x4f\xff\x51", 0, 4096)  # SOC + SIZ, possibly after JP2 boxes
        if start < 0 or len(first) < start + 24:
            raise ImageError(where, f"{syntax.name} fragment has no codestream header (SIZ marker)")
        xsiz, ysiz, xosiz, yosiz = struct.unpack_from(">IIII", first, start + 8)
        width, height = xsiz - xosiz, ysiz - yosiz
    else:
        header = parse_jpeg_header(first, where, jpeg_ls=is_jls)
        width, height = header.width, header.height
    if (width, height) != (ds.Columns, ds.Rows):
        raise ImageError(where, f"the {syntax.name} codestream is {width} x {height} pixels but Rows/Columns say "
                                f"{ds.Columns} x {ds.Rows}; refusing the inconsistent file")


def _first_frame(ds: Dataset, syntax, where: str) -> bytes:
    """The bytes of frame 1 of encapsulated pixel data (its fragments joined), after checking that every item
    fits inside the element: a fragment that declares more bytes than follow it is a truncated file."""
    data = ds.PixelData
    pos, n, items = 0, len(data), 0
    while pos + 8 <= n:
        group, elem, length = struct.unpack_from("<HHI", data, pos)
        if (group, elem) == (0xFFFE, 0xE0DD):  # sequence delimiter
            break
        if (group, elem) != (0xFFFE, 0xE000):
            raise ImageError(where, f"corrupt {syntax.name} pixel data: expected an item tag at byte {pos} of the "
                                    f"Pixel Data element, found ({group:04X},{elem:04X})")
        if pos + 8 + length > n:
            raise ImageError(where, f"truncated {syntax.name} pixel data: fragment {items} declares {length} bytes "
                                    f"but only {n - pos - 8} follow; the file was cut short or damaged in transfer")
        pos, items = pos + 8 + length, items + 1
    frames = _get(ds, "NumberOfFrames")
    try:
        count = max(1, int(frames)) if frames not in (None, "") else 1
    except (TypeError, ValueError):
        count = 1
    try:
        return next(generate_frames(data, number_of_frames=count), b"")
    except Exception as exc:  # noqa: BLE001 - pydicom raises several types on inconsistent offset tables
        raise ImageError(where, f"corrupt {syntax.name} pixel data: cannot find the first frame ({_describe(exc)})") \
            from None


def _to_uint8(ds: Dataset, where: str) -> tuple[np.ndarray, str]:
    # pydicom's own RLE decoder expands a segment as far as its runs say (64x per byte pair) before trimming;
    # pylibjpeg-rle decodes into the Rows x Columns buffer and stops, so it is the only RLE decoder used.
    plugin = "pylibjpeg" if ds.file_meta.TransferSyntaxUID == RLELossless else ""
    if plugin and plugin not in RLELosslessDecoder.available_plugins:
        raise ImageError(where, "decoding RLE Lossless needs the pylibjpeg-rle package: pip install pylibjpeg-rle")
    raw = pixel_array(ds, index=0, decoding_plugin=plugin)
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if raw.shape[:2] != (ds.Rows, ds.Columns):
        raise ImageError(where, f"decoded pixel data has shape {raw.shape}, header says {ds.Rows} x {ds.Columns}")
    if photometric in ("MONOCHROME1", "MONOCHROME2"):
        if raw.ndim != 2:
            raise ImageError(where, f"{photometric} image with {raw.shape[2]} samples per pixel")
        image, mapping = _monochrome_to_uint8(ds, raw)
        if photometric == "MONOCHROME1":
            image = np.subtract(np.uint8(255), image, dtype=np.uint8)
        return image, mapping
    if photometric == "PALETTE COLOR":
        raw = apply_color_lut(raw, ds)
    grey = to_grey(raw, "rgb")
    return (grey, "identity") if grey.dtype == np.uint8 else (robust_window(grey), "percentile")


def _monochrome_to_uint8(ds: Dataset, raw: np.ndarray) -> tuple[np.ndarray, str]:
    slope, intercept = _get(ds, "RescaleSlope"), _get(ds, "RescaleIntercept")
    if slope is not None and intercept is not None and not np.isfinite([float(slope), float(intercept)]).all():
        raise ValueError(f"Rescale Slope/Intercept must be finite numbers, got {slope}/{intercept}")
    values = apply_modality_lut(raw, ds)
    if _has_voi_lut(ds):
        return _voi_lut_to_uint8(ds, values), "voi_lut"
    if _get(ds, "WindowCenter") not in (None, "") and _get(ds, "WindowWidth") not in (None, ""):
        windowed = _window_to_uint8(ds, values)
        if windowed is not None:
            return windowed, "window"
    bits = int(ds.BitsStored)
    if not _rescaled(ds) and int(ds.get("PixelRepresentation", 0)) == 0 and bits <= 8:
        if bits == 8:
            return (raw if raw.dtype == np.uint8 else np.minimum(raw, 255).astype(np.uint8)), "identity"
        return scale_to_uint8(raw, 0.0, float(2**bits - 1)), "scaled"
    return robust_window(values, mask=_padding_mask(ds, raw)), "percentile"


def _has_voi_lut(ds: Dataset) -> bool:
    seq = _get(ds, "VOILUTSequence")
    return bool(seq) and "LUTDescriptor" in seq[0] and "LUTData" in seq[0]


def _voi_lut_to_uint8(ds: Dataset, values: np.ndarray) -> np.ndarray:
    entries, first = (int(v) for v in ds.VOILUTSequence[0].LUTDescriptor[:2])
    entries = entries or 65536
    # Clip into the LUT's input range ourselves: pydicom's uint16 index array would wrap out-of-range values.
    index = np.clip(np.rint(values) if values.dtype.kind == "f" else values, first, first + entries - 1)
    out = apply_voi(index.astype(np.int64), ds, 0)
    table = apply_voi(np.arange(first, first + entries, dtype=np.int64), ds, 0)
    lo, hi = float(table.min()), float(table.max())
    return scale_to_uint8(out, lo, hi) if hi > lo else np.zeros(out.shape, dtype=np.uint8)


def _window_to_uint8(ds: Dataset, values: np.ndarray) -> np.ndarray | None:
    try:
        out = apply_windowing(values, ds, 0)
        # Far-out probes give the window's output range (pydicom's, which depends on bits and rescale).
        with np.errstate(over="ignore"):
            lo, hi = (float(v) for v in apply_windowing(np.array([-1e12, 1e12]), ds, 0))
    except (ValueError, TypeError, IndexError, ZeroDivisionError):
        return None  # invalid window (e.g. width < 1): fall back to the default policy
    if not (np.isfinite(lo) and np.isfinite(hi)) or lo == hi:
        return None
    return scale_to_uint8(out, lo, hi)


def _rescaled(ds: Dataset) -> bool:
    if _get(ds, "ModalityLUTSequence"):
        return True
    slope, intercept = _get(ds, "RescaleSlope"), _get(ds, "RescaleIntercept")
    if slope is None or intercept is None:
        return False
    return float(slope) != 1.0 or float(intercept) != 0.0


def _padding_mask(ds: Dataset, raw: np.ndarray) -> np.ndarray | None:
    pad, limit = _get(ds, "PixelPaddingValue"), _get(ds, "PixelPaddingRangeLimit")
    if not isinstance(pad, int):
        return None
    if not isinstance(limit, int):
        return raw == pad
    lo, hi = sorted((pad, limit))
    return (raw >= lo) & (raw <= hi)


def dicom_meta(ds: Dataset) -> dict[str, Any]:
    """PHI-free header summary: view, sex, age (years), pixel_spacing ((row_mm, col_mm) or None), modality,
    body_part, photometric, bits_stored, source_format ("dicom"), frames, mapping (None until decoded).

    Only these fields are read; patient names, IDs and birth dates are never copied. Malformed values
    become None rather than errors.
    """
    meta = empty_meta("dicom")
    frames = _get(ds, "NumberOfFrames")
    meta.update(
        view=_text(ds, "ViewPosition"),
        sex={"M": "M", "F": "F"}.get(_text(ds, "PatientSex") or ""),
        age=parse_age(_text(ds, "PatientAge")),
        pixel_spacing=_spacing(ds),
        modality=_text(ds, "Modality"),
        body_part=_text(ds, "BodyPartExamined"),
        photometric=_text(ds, "PhotometricInterpretation"),
        bits_stored=_get(ds, "BitsStored") if isinstance(_get(ds, "BitsStored"), int) else None,
        frames=max(1, int(frames)) if isinstance(frames, (int, float)) or str(frames or "").isdigit() else 1,
    )
    return meta


def parse_age(text: str | None) -> float | None:
    """DICOM Age String -> years: ``"061Y"`` -> 61.0, ``"006M"`` -> 0.5, ``"010W"``, ``"020D"``; a bare number
    (non-standard but common, e.g. ``"62"``) is years. Unparseable or over 130 years -> None."""
    match = _AGE.match(text or "")
    if not match:
        return None
    years = int(match.group(1)) * _AGE_UNIT_YEARS[match.group(2).upper()]
    return years if years <= 130 else None


def is_chest_radiograph_header(meta: dict[str, Any]) -> tuple[bool, str]:
    """Does a :func:`dicom_meta`/``read_image_with_meta`` dict describe a frontal chest radiograph?

    False when the modality is not a projection radiograph (CR/DX/DR/RG), the body part examined is stated and
    is not the chest, or the view is lateral. Missing header fields (always the case for PNG/JPEG) are not held
    against the image; the reason says what was assumed.
    """
    if meta.get("source_format") != "dicom":
        return True, "no DICOM header to check (PNG/JPEG); assumed a chest radiograph"
    modality, body, view = meta.get("modality"), meta.get("body_part"), meta.get("view")
    if modality is not None and modality not in CHEST_MODALITIES:
        expected = ", ".join(CHEST_MODALITIES)
        return False, f"modality {modality} is not a projection radiograph (expected one of {expected})"
    if body is not None and not any(part in body for part in _CHEST_PARTS):
        return False, f"body part examined is {body}, not CHEST"
    if view in LATERAL_VIEWS:
        return False, f"lateral view ({view}); the classifiers expect frontal (PA/AP) films"
    return True, (f"modality {modality or 'not stated'}, body part {body or 'not stated'}, "
                  f"view {view or 'not stated'}")


def _get(ds: Dataset, keyword: str) -> Any:
    try:  # values are converted lazily, so a malformed element only fails here
        return ds.get(keyword)
    except Exception:
        return None


def _text(ds: Dataset, keyword: str) -> str | None:
    value = _get(ds, keyword)
    text = str(value).strip().upper() if value is not None else ""
    return text or None


def _spacing(ds: Dataset) -> tuple[float, float] | None:
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = _get(ds, keyword)
        try:
            row_mm, col_mm = (float(v) for v in value)
        except (TypeError, ValueError):
            continue
        if row_mm > 0 and col_mm > 0 and np.isfinite(row_mm) and np.isfinite(col_mm):
            return (row_mm, col_mm)
    return None


def _syntax(ds: Dataset) -> str:
    try:
        return f"transfer syntax {ds.file_meta.TransferSyntaxUID.name}"
    except Exception:
        return "unknown transfer syntax"


def _describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__


check_deflated_size = _check_deflated_size  # public: the DICOM node checks received datasets before parsing them

__all__ = ["decode_dicom", "decode_checked_bytes", "check_deflated_size", "dicom_meta", "parse_age",
           "is_chest_radiograph_header", "CHEST_MODALITIES", "LATERAL_VIEWS"]
