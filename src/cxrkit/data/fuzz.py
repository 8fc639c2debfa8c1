"""Mutation fuzzing of the safe decoder (`cxr bench fuzz --target decode`; the service target is in
:mod:`cxrkit.deploy.serve.fuzz_service`).

Seeds are small valid PNG (8/16-bit grey, colour), JPEG (grey, colour, progressive) and DICOM files (native 8/12/16
bit, MONOCHROME1, window and VOI LUT, palette colour, multi-frame, RLE, JPEG-LS, JPEG 2000, plus any real files
given). Case ``i`` is a pure function of ``(seed, i)``: a seed file with 1-4 byte-level mutations (bit flips,
boundary bytes and integers, inserted, deleted or duplicated runs, truncation; for PNG often with the chunk CRCs
made valid again) or a structure-aware mutation: for PNG, the inflated scanlines, the IHDR fields or extra chunks,
written back with valid CRCs and zlib streams so they reach the decoder; for DICOM, a structure-aware
mutation (header fields such as Rows/Columns/bits/photometric/frames/window/rescale, the transfer syntax, the
VOI LUT and palette LUTs, the encapsulated fragments and offset table) serialised again.

:func:`fuzz_decode` runs the cases through :func:`cxrkit.data.read_image` in a child process watched by the
parent: a case that raises anything but :class:`~cxrkit.data.errors.ImageError` is an *error*, a child that dies
is a *crash*, a case over ``case_timeout_s`` is a *hang* (the child is replaced and the run goes on). Bounded by
``cases`` and ``time_limit_s``.
"""
from __future__ import annotations

import io
import multiprocessing as mp
import os
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import numpy as np

INTERESTING_INTS = (0, 1, 2, 7, 8, 12, 15, 16, 17, 255, 256, 0x7FFF, 0x8000, 0xFFFF, 0x10000, 0x7FFFFFFF,
                    0x80000000, 0xFFFFFFFF)


# -- seeds ----------------------------------------------------------------------------------------------------------
def _film(size: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    lungs = np.exp(-(((xx - 0.3) / 0.15) ** 2 + ((yy - 0.5) / 0.3) ** 2)) + \
        np.exp(-(((xx - 0.7) / 0.15) ** 2 + ((yy - 0.5) / 0.3) ** 2))
    return np.clip(200 - 120 * lungs + rng.normal(0, 6, (size, size)), 0, 255).astype(np.uint8)


def raster_seeds(size: int = 96) -> dict[str, bytes]:
    """Valid PNG and JPEG files to mutate."""
    import cv2

    grey = _film(size)
    colour = np.dstack([grey, np.roll(grey, 7, 0), np.roll(grey, 11, 1)])
    enc = lambda ext, img, *params: cv2.imencode(ext, img, list(params))[1].tobytes()  # noqa: E731
    return {
        "png_grey8": enc(".png", grey),
        "png_grey16": enc(".png", grey.astype(np.uint16) * 257),
        "png_rgb": enc(".png", colour),
        "png_rgba": enc(".png", np.dstack([colour, np.full_like(grey, 255)])),
        "jpeg_grey": enc(".jpg", grey, cv2.IMWRITE_JPEG_QUALITY, 90),
        "jpeg_colour": enc(".jpg", colour, cv2.IMWRITE_JPEG_QUALITY, 90),
        "jpeg_progressive": enc(".jpg", grey, cv2.IMWRITE_JPEG_PROGRESSIVE, 1),
    }


def _dataset(pixels: np.ndarray, *, bits: int, photometric: str = "MONOCHROME2", frames: int | None = None,
             **tags):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=["cxrkit-fuzz", photometric, str(bits)])
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition = "CR", "CHEST", "PA"
    ds.Rows, ds.Columns = pixels.shape[1:3] if frames else pixels.shape[:2]
    ds.SamplesPerPixel = 1
    if frames:
        ds.NumberOfFrames = frames
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 8 if bits <= 8 else 16
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits - 1, 0
    for k, v in tags.items():
        setattr(ds, k, v)
    ds.PixelData = pixels.astype(np.uint8 if bits <= 8 else np.uint16).tobytes()
    return ds


def _to_bytes(ds) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def dicom_seeds(size: int = 64) -> dict[str, bytes]:
    """Valid DICOM files covering the decoder's intensity paths and encodings (those pydicom can encode here)."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence
    from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless

    film = _film(size, 1)
    s12 = film.astype(np.uint16) * 16
    seeds = {
        "dcm_native8": _dataset(film, bits=8),
        "dcm_native12_window": _dataset(s12, bits=12, WindowCenter=2048, WindowWidth=4096, RescaleSlope=1,
                                        RescaleIntercept=0),
        "dcm_mono1_16": _dataset(film.astype(np.uint16) * 257, bits=16, photometric="MONOCHROME1"),
        "dcm_multiframe": _dataset(np.stack([film, film[::-1]]), bits=8, frames=2),
    }
    voi = _dataset(s12, bits=12)
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    item.LUTData = (np.arange(4096, dtype=np.uint16) * 16).astype("<u2").tobytes()
    voi.VOILUTSequence = Sequence([item])
    seeds["dcm_voi_lut"] = voi
    pal = _dataset(film // 32, bits=8, photometric="PALETTE COLOR")
    for c, scale in (("Red", 1), ("Green", 2), ("Blue", 3)):
        setattr(pal, f"{c}PaletteColorLookupTableDescriptor", [256, 0, 16])
        setattr(pal, f"{c}PaletteColorLookupTableData", ((np.arange(256, dtype=np.int64) * 64 * scale) % 65536)
                .astype("<u2").tobytes())
    seeds["dcm_palette"] = pal
    for name, syntax, src in (("dcm_rle", RLELossless, s12), ("dcm_jpegls", JPEGLSLossless, s12),
                              ("dcm_j2k", JPEG2000Lossless, film)):
        ds = _dataset(src, bits=12 if src is s12 else 8)
        try:
            ds.compress(syntax)
        except Exception:  # noqa: BLE001 - the encoder plugin is not installed here: that seed is skipped
            continue
        seeds[name] = ds
    return {k: _to_bytes(v) for k, v in seeds.items()}


def build_seeds(extra_files: Sequence[str | os.PathLike] = ()) -> dict[str, bytes]:
    """Every seed: :func:`raster_seeds`, :func:`dicom_seeds` and ``extra_files`` (named ``file:<name>``)."""
    seeds = {**raster_seeds(), **dicom_seeds()}
    for f in extra_files:
        seeds[f"file:{Path(f).name}"] = Path(f).read_bytes()
    return seeds


# -- mutations -------------------------------------------------------------------------------------------------------
def mutate_bytes(data: bytes, rng: np.random.Generator, n: int | None = None) -> bytes:
    """1-4 (or ``n``) byte-level mutations of ``data``."""
    buf = bytearray(data)
    for _ in range(n or int(rng.integers(1, 5))):
        if not buf:
            buf = bytearray(rng.integers(0, 256, 16, dtype=np.uint8).tobytes())
        pos = int(rng.integers(0, len(buf)))
        kind = int(rng.integers(0, 8))
        if kind == 0:
            buf[pos] ^= 1 << int(rng.integers(0, 8))
        elif kind == 1:
            buf[pos] = int(rng.choice([0x00, 0xFF, 0x7F, 0x80, 0x01]))
        elif kind == 2:
            width = int(rng.choice([2, 4]))
            value = int(rng.choice(INTERESTING_INTS)) & ((1 << (8 * width)) - 1)
            buf[pos:pos + width] = value.to_bytes(width, "big" if rng.random() < 0.5 else "little")
        elif kind == 3:
            buf[pos:pos] = rng.integers(0, 256, int(rng.integers(1, 64)), dtype=np.uint8).tobytes()
        elif kind == 4:
            del buf[pos:pos + int(rng.integers(1, 256))]
        elif kind == 5:
            del buf[max(1, pos):]
        elif kind == 6:
            end = min(len(buf), pos + int(rng.integers(1, 512)))
            buf[pos:pos] = buf[pos:end]
        else:
            buf[pos:pos + 4] = bytes([0xFF, int(rng.integers(0xC0, 0x100))]) + bytes(2)  # a stray JPEG marker
    return bytes(buf)


def fix_png_crcs(data: bytes) -> bytes:
    """Recompute the CRC of every whole chunk of a (mutated) PNG, so the mutation reaches the inflate and filter
    stages instead of stopping at libpng's CRC check."""
    import struct
    import zlib

    buf, pos = bytearray(data), 8
    while pos + 12 <= len(buf):
        length = struct.unpack_from(">I", buf, pos)[0]
        end = pos + 12 + length
        if end > len(buf):
            break
        buf[end - 4:end] = struct.pack(">I", zlib.crc32(bytes(buf[pos + 4:end - 4])) & 0xFFFFFFFF)
        pos = end
    return bytes(buf)


def _png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    import struct

    chunks, pos = [], 8
    while pos + 12 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, pos)
        chunks.append((kind, data[pos + 8:pos + 8 + length]))
        pos += 12 + length
    return chunks


def _png_build(chunks: list[tuple[bytes, bytes]]) -> bytes:
    import struct
    import zlib

    return b"\x89PNG\r\n\x1a\n" + b"".join(struct.pack(">I", len(d)) + k + d +
                                           struct.pack(">I", zlib.crc32(k + d) & 0xFFFFFFFF) for k, d in chunks)


def mutate_png(data: bytes, rng: np.random.Generator) -> bytes:
    """A structure-aware PNG mutation with valid CRCs and zlib streams: the inflated scanlines (filter bytes
    included), the IHDR fields, or extra / duplicated chunks (iCCP, tEXt, PLTE, tRNS, a second IHDR)."""
    import zlib

    chunks = _png_chunks(data)
    kind = int(rng.integers(0, 3))
    if kind == 0:
        raw = zlib.decompress(b"".join(d for k, d in chunks if k == b"IDAT"))
        raw = mutate_bytes(raw, rng)
        idat = zlib.compress(raw, 6)
        cut = int(rng.integers(1, len(idat) + 1)) if rng.random() < 0.3 else len(idat)
        out = [(k, d) for k, d in chunks if k != b"IDAT"]
        out.insert(1, (b"IDAT", idat[:cut]))
        if cut < len(idat):
            out.insert(2, (b"IDAT", idat[cut:]))
        return _png_build(out)
    if kind == 1:
        ihdr = bytearray(chunks[0][1])
        field = int(rng.integers(0, 7))
        if field < 2:  # width / height
            ihdr[4 * field:4 * field + 4] = int(rng.choice(INTERESTING_INTS)).to_bytes(4, "big")
        else:
            ihdr[6 + field] = int(rng.choice([0, 1, 2, 3, 4, 6, 8, 16, 255]))
        return _png_build([(b"IHDR", bytes(ihdr)), *chunks[1:]])
    extra = [(b"iCCP", b"icc\x00\x00" + rng.integers(0, 256, 40, dtype=np.uint8).tobytes()),
             (b"tEXt", b"Comment\x00" + bytes(rng.integers(32, 127, 30, dtype=np.uint8))),
             (b"PLTE", rng.integers(0, 256, 3 * int(rng.integers(0, 300)), dtype=np.uint8).tobytes()),
             (b"tRNS", rng.integers(0, 256, int(rng.integers(0, 300)), dtype=np.uint8).tobytes()),
             (b"IHDR", chunks[0][1]), (b"gAMA", b"\x00\x00\x00\x00"), (b"sBIT", b"\x11\x11\x11\x11")]
    chosen = extra[int(rng.integers(0, len(extra)))]
    out = list(chunks)
    out.insert(int(rng.integers(1, len(out))), chosen)
    return _png_build(out)


_DICOM_FIELDS = {
    "Rows": (0, 1, 2, 63, 64, 65, 4096, 65535), "Columns": (0, 1, 2, 63, 64, 65, 4096, 65535),
    "BitsAllocated": (0, 1, 7, 8, 12, 16, 32, 64), "BitsStored": (0, 1, 7, 8, 12, 16, 17, 32),
    "HighBit": (0, 7, 11, 15, 31, 255), "PixelRepresentation": (0, 1, 2),
    "SamplesPerPixel": (0, 1, 2, 3, 4, 255), "PlanarConfiguration": (0, 1, 2),
    "NumberOfFrames": (0, 1, 2, 1000, 2**31 - 1),
    "PhotometricInterpretation": ("MONOCHROME1", "MONOCHROME2", "RGB", "PALETTE COLOR", "YBR_FULL", "YBR_FULL_422",
                                  "HSV", ""),
    "WindowCenter": (0, -1e9, 1e9, "nan", "inf"), "WindowWidth": (0, -1, 1, 1e-30, 1e30, "nan"),
    "RescaleSlope": (0, -1, 1e-30, 1e30, "nan", "inf"), "RescaleIntercept": (-1e30, 1e30, "nan"),
    "PixelPaddingValue": (0, 65535), "VOILUTFunction": ("LINEAR", "SIGMOID", "LINEAR_EXACT", "BOGUS"),
}
_SYNTAXES = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99",
             "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57",
             "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81", "1.2.840.10008.1.2.4.90",
             "1.2.840.10008.1.2.4.91", "1.2.3.4.5")


def mutate_dicom(data: bytes, rng: np.random.Generator) -> bytes:
    """A structure-aware mutation of a DICOM file (falls back to :func:`mutate_bytes` when it cannot be parsed or
    written back)."""
    import pydicom
    from pydicom.encaps import encapsulate, generate_fragments
    from pydicom.uid import UID

    try:
        ds = pydicom.dcmread(io.BytesIO(data))
        kind = int(rng.integers(0, 5))
        if kind <= 1:
            for _ in range(int(rng.integers(1, 4))):
                field = str(rng.choice(list(_DICOM_FIELDS)))
                values = _DICOM_FIELDS[field]
                setattr(ds, field, values[int(rng.integers(0, len(values)))])
        elif kind == 2:
            ds.file_meta.TransferSyntaxUID = UID(str(rng.choice(_SYNTAXES)))
        elif kind == 3 and ds.file_meta.TransferSyntaxUID.is_encapsulated:
            frags = list(generate_fragments(ds.PixelData))[1:]
            op = int(rng.integers(0, 4))
            if op == 0 and frags:
                i = int(rng.integers(0, len(frags)))
                frags[i] = frags[i][: int(rng.integers(0, len(frags[i]) + 1))]
            elif op == 1 and frags:
                frags.append(frags[int(rng.integers(0, len(frags)))])
            elif op == 2 and frags:
                frags = [mutate_bytes(f, rng) for f in frags]
            else:
                frags = frags[::-1] or [b""]
            ds.PixelData = encapsulate([f + b"\x00" * (len(f) % 2) for f in frags],
                                       has_bot=bool(rng.random() < 0.5))
        elif "VOILUTSequence" in ds and rng.random() < 0.5:
            item = ds.VOILUTSequence[0]
            item.LUTDescriptor = [int(rng.choice([0, 1, 4096, 65535])), int(rng.choice([0, -5, 60000])),
                                  int(rng.choice([8, 16, 0, 33]))]
        elif "RedPaletteColorLookupTableDescriptor" in ds:
            ds.RedPaletteColorLookupTableDescriptor = [int(rng.choice([0, 1, 256, 65535])), 0,
                                                       int(rng.choice([8, 16, 0]))]
            if rng.random() < 0.5:
                ds.GreenPaletteColorLookupTableData = b"\x00" * int(rng.integers(0, 64))
        else:
            ds.PixelData = mutate_bytes(ds.PixelData, rng)
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=False)
        return out.getvalue() if rng.random() < 0.8 else mutate_bytes(out.getvalue(), rng, 1)
    except Exception:  # noqa: BLE001 - an unwritable mutation: mutate the bytes instead
        return mutate_bytes(data, rng)


def make_case(seeds: dict[str, bytes], seed: int, index: int) -> tuple[str, bytes]:
    """Case ``index`` of run ``seed``: (seed name, mutated bytes). Deterministic."""
    import warnings

    rng = np.random.default_rng([seed, index])
    names = sorted(seeds)
    name = names[int(rng.integers(0, len(names)))]
    data = seeds[name]
    if name.startswith(("dcm_", "file:")) and data[128:132] == b"DICM" and rng.random() < 0.6:
        with warnings.catch_warnings():  # pydicom warns about the invalid values it is asked to write
            warnings.simplefilter("ignore")
            return name, mutate_dicom(data, rng)
    if name.startswith("png") and rng.random() < 0.6:
        return name, mutate_png(data, rng)
    mutated = mutate_bytes(data, rng)
    if name.startswith("png") and rng.random() < 0.5:
        mutated = fix_png_crcs(mutated)
    return name, mutated


def seed_format(name: str) -> str:
    return "dicom" if name.startswith("dcm_") or name.endswith(".dcm") else name.split("_")[0]


# -- the decode target ----------------------------------------------------------------------------------------------
def _child(conn, seed: int, extra_files: list[str], stderr_path: str) -> None:
    # The decoders' own stderr chatter (libpng, libjpeg) goes to a file the parent counts.
    fd = os.open(stderr_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(fd, 2)
    os.environ["RUST_BACKTRACE"] = "0"  # a Rust codec's panic report is one line, not a backtrace
    import warnings

    warnings.simplefilter("ignore")
    from cxrkit.data.decode import read_image
    from cxrkit.data.errors import ImageError

    seeds = build_seeds(extra_files)
    with tempfile.TemporaryDirectory(prefix="cxr-fuzz-") as tmp:
        path = Path(tmp) / "case"
        while True:
            index = conn.recv()
            if index is None:
                return
            name, data = make_case(seeds, seed, index)
            path.write_bytes(data)
            try:
                image = read_image(path)
                outcome = ("ok", f"{image.shape[1]}x{image.shape[0]}")
            except ImageError as exc:
                outcome = ("refused", " ".join(exc.reason.split()[:3]))
            except BaseException as exc:  # noqa: BLE001 - what the fuzzer is looking for
                outcome = ("error", f"{type(exc).__name__}: {str(exc)[:200]}")
            conn.send((name, *outcome))


class _Worker:
    def __init__(self, seed: int, extra_files: list[str], stderr_path: str):
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_child, args=(child, seed, extra_files, stderr_path), daemon=True)
        self.proc.start()
        child.close()

    def stop(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(5)


def fuzz_decode(cases: int = 1000, *, seed: int = 0, time_limit_s: float = 600.0, case_timeout_s: float = 10.0,
                extra_files: Sequence[str | os.PathLike] = (), start_timeout_s: float = 120.0) -> dict[str, Any]:
    """Run up to ``cases`` mutated files through ``read_image`` (stopping after ``time_limit_s``); see the module
    docstring. Returns counts by outcome and by format, the commonest refusal reasons, examples of every error,
    crash and hang, and the number of lines the decoders wrote to stderr."""
    extra = [os.fspath(f) for f in extra_files]
    outcomes: Counter = Counter()
    by_format: dict[str, Counter] = {}
    reasons: Counter = Counter()
    problems: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="cxr-fuzz-log-") as logdir:
        stderr_path = os.path.join(logdir, "stderr.txt")
        worker = _Worker(seed, extra, stderr_path)
        start = time.monotonic()
        done = 0
        first = True
        try:
            for index in range(cases):
                if time.monotonic() - start > time_limit_s:
                    break
                worker.conn.send(index)
                # The first case also waits for the child to import and build its seeds.
                ready = worker.conn.poll(case_timeout_s + (start_timeout_s if first else 0.0))
                first = False
                try:
                    reply = worker.conn.recv() if ready else None
                except EOFError:
                    reply = "crash"
                if reply is None or reply == "crash":
                    kind = "hang" if reply is None else "crash"
                    worker.stop()
                    problems.append({"index": index, "outcome": kind, "exitcode": worker.proc.exitcode})
                    outcomes[kind] += 1
                    worker, first = _Worker(seed, extra, stderr_path), True
                    done += 1
                    continue
                name, outcome, detail = reply
                fmt = seed_format(name)
                outcomes[outcome] += 1
                by_format.setdefault(fmt, Counter())[outcome] += 1
                if outcome == "refused":
                    reasons[detail] += 1
                elif outcome == "error":
                    problems.append({"index": index, "seed": name, "outcome": "error", "detail": detail})
                done += 1
        finally:
            try:
                worker.conn.send(None)
            except OSError:
                pass
            worker.stop()
        elapsed = time.monotonic() - start
        with open(stderr_path, errors="replace") if os.path.exists(stderr_path) else io.StringIO() as fh:
            stderr_lines = [line.rstrip() for line in fh]
    kinds = Counter(line.split(":")[0][:40] for line in stderr_lines)
    return {
        "target": "decode", "seed": seed, "cases": done, "elapsed_s": round(elapsed, 1),
        "outcomes": {k: outcomes.get(k, 0) for k in ("ok", "refused", "error", "crash", "hang")},
        "by_format": {f: dict(c) for f, c in sorted(by_format.items())},
        "top_refusals": dict(reasons.most_common(12)),
        "problems": problems[:50],
        "decoder_stderr_lines": len(stderr_lines), "decoder_stderr_kinds": dict(kinds.most_common(8)),
    }
