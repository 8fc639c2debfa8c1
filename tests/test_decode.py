"""cxrkit.data.decode: format sniffing, limits, PNG/JPEG decoding, refusal of bad input."""
from __future__ import annotations

import io
import struct
import time
import tracemalloc
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from cxrkit.data.decode import DecodeLimits, decode_bytes, read_image, read_image_with_meta, robust_window
from cxrkit.data.errors import CxrError, ImageError

def _fast(n: int) -> settings:
    return settings(max_examples=n, deadline=None, derandomize=True, database=None)
SMALL_LIMITS = DecodeLimits(max_pixels=4_000_000)  # keeps mutated headers from allocating much


def _synthetic(h=48, w=64, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ramp = np.add.outer(np.arange(h), np.arange(w)).astype(np.float64)
    return np.clip(ramp * 255 / ramp.max() + rng.normal(0, 8, (h, w)), 0, 255).astype(np.uint8)


def _pil_bytes(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _bomb_png(width: int, height: int) -> bytes:
    """A tiny PNG whose IHDR claims width x height (8-bit grey); its IDAT holds only a few rows."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024, 9)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def _luma(rgb: np.ndarray) -> np.ndarray:
    return np.rint(rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114)


def nih_png(shared_data: Path, name: str) -> tuple[Path, int]:
    """A real NIH PNG and its side: the 1024-px original when the full reference data is here, else its 256-px copy
    from the committed subset."""
    full = shared_data / "nih-fullres" / name
    return (full, 1024) if full.is_file() else (shared_data / "nih-sample" / "images" / name, 256)


@pytest.fixture(scope="module")
def real_png(shared_data) -> bytes:
    return nih_png(shared_data, "00000075_000.png")[0].read_bytes()


# -- real NIH files ---------------------------------------------------------------------------------------------
def test_real_nih_png_grey_and_rgba(shared_data):
    path, side = nih_png(shared_data, "00000075_000.png")
    grey, meta = read_image_with_meta(path)
    assert grey.shape == (side, side) and grey.dtype == np.uint8 and grey.flags.c_contiguous
    assert meta["source_format"] == "png" and meta["photometric"] == "grey" and meta["mapping"] == "identity"
    assert meta["view"] is meta["sex"] is meta["age"] is meta["pixel_spacing"] is meta["modality"] is None
    path, _ = nih_png(shared_data, "00000100_000.png")
    rgba = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    image, meta = read_image_with_meta(path)
    assert meta["photometric"] == "rgba"
    # NIH's RGBA files are opaque grey stored four times: the grey plane must come back unchanged.
    np.testing.assert_array_equal(image, rgba[..., 0])



def test_colourfulness_is_measured_while_decoding_colour_files(shared_data, tmp_path):
    """Colour PNG/JPEG files get ``colourfulness`` from the decoder (so the quality checks need not decode them a
    second time): close to the full-resolution figure of a second colour decode, ~0 for NIH's grey-as-RGBA films,
    and absent for grey files."""
    from cxrkit.deploy.quality_features import file_colourfulness

    _, meta = read_image_with_meta(nih_png(shared_data, "00000075_000.png")[0])
    assert "colourfulness" not in meta
    path, _ = nih_png(shared_data, "00000100_000.png")
    _, meta = read_image_with_meta(path)
    assert meta["colourfulness"] == pytest.approx(0.0, abs=1e-6) == file_colourfulness(path.read_bytes())
    rng = np.random.default_rng(0)
    photo = cv2.normalize(cv2.GaussianBlur(rng.integers(0, 256, (900, 1200, 3), dtype=np.uint8), (0, 0), 6), None,
                          0, 255, cv2.NORM_MINMAX)
    for suffix in (".png", ".jpg"):
        cv2.imwrite(str(tmp_path / f"photo{suffix}"), photo)
        _, meta = read_image_with_meta(tmp_path / f"photo{suffix}")
        full = file_colourfulness((tmp_path / f"photo{suffix}").read_bytes())
        assert full > 30 and meta["colourfulness"] == pytest.approx(full, rel=0.02)

# -- PNG/JPEG colour types and bit depths -----------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["L", "LA", "RGB", "RGBA", "P"])
def test_png_8bit_modes_become_luma(tmp_path, mode):
    rgb = np.stack([_synthetic(seed=1), _synthetic(seed=2), _synthetic(seed=3)], axis=-1)
    source = Image.fromarray(_synthetic()) if mode in ("L", "LA") else Image.fromarray(rgb)
    image_in = source.convert(mode)
    path = tmp_path / "x.png"
    path.write_bytes(_pil_bytes(image_in, "PNG"))
    out = read_image(path)
    assert out.shape == (48, 64) and out.dtype == np.uint8
    if mode in ("L", "LA"):
        np.testing.assert_array_equal(out, _synthetic())
    else:
        expected = _luma(np.asarray(image_in.convert("RGB")).astype(np.float64))
        assert np.abs(out.astype(int) - expected).max() <= 1


def test_png_1bit_maps_to_black_and_white():
    bits = _synthetic() > 128
    out = decode_bytes(_pil_bytes(Image.fromarray(bits), "PNG"))
    np.testing.assert_array_equal(out, np.where(bits, 255, 0))


def _percentile_map(values: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(values.astype(np.float64), [0.5, 99.5])
    return np.clip(np.rint((values - lo) * 255.0 / (hi - lo)), 0, 255)


def test_png_16bit_grey_uses_the_percentile_window():
    # 12-bit data in a 16-bit PNG (the common case): ">> 8" would make it nearly black.
    values = (_synthetic().astype(np.uint16) * 16 + 5).astype(np.uint16)
    ok, buf = cv2.imencode(".png", values)
    out, meta = read_image_with_meta_bytes(buf.tobytes())
    assert meta["bits_stored"] == 16 and meta["mapping"] == "percentile"
    assert np.abs(out.astype(int) - _percentile_map(values)).max() <= 1
    assert out.max() == 255 and out.min() == 0


def test_png_16bit_rgb_is_grey_then_windowed():
    rng = np.random.default_rng(5)
    bgr = rng.integers(1000, 60000, (32, 40, 3), dtype=np.uint16)
    ok, buf = cv2.imencode(".png", bgr)
    out = decode_bytes(buf.tobytes())
    grey = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    assert np.abs(out.astype(int) - _percentile_map(grey)).max() <= 1


def read_image_with_meta_bytes(data: bytes):
    from cxrkit.data.decode import decode_bytes_with_meta

    return decode_bytes_with_meta(data, name="t.png")


@pytest.mark.parametrize("mode", ["L", "RGB", "CMYK"])
def test_jpeg_modes(mode):
    rgb = np.stack([_synthetic(seed=1)] * 3, axis=-1)
    source = Image.fromarray(rgb).convert(mode)
    out, meta = read_image_with_meta_bytes(_pil_bytes(source, "JPEG", quality=95))
    assert out.shape == (48, 64) and out.dtype == np.uint8 and meta["source_format"] == "jpeg"
    assert np.abs(out.astype(int) - _synthetic(seed=1)).mean() < 6  # lossy, but the same picture


def test_constant_16bit_image_maps_to_zero():
    np.testing.assert_array_equal(robust_window(np.full((4, 5), 700, np.uint16)), np.zeros((4, 5), np.uint8))


# -- format sniffing ---------------------------------------------------------------------------------------------
def test_format_comes_from_bytes_not_extension(tmp_path):
    png = _pil_bytes(Image.fromarray(_synthetic()), "PNG")
    jpeg = _pil_bytes(Image.fromarray(_synthetic()), "JPEG")
    (tmp_path / "a.jpg").write_bytes(png)
    (tmp_path / "b.png").write_bytes(jpeg)
    (tmp_path / "c.dcm").write_bytes(png)
    np.testing.assert_array_equal(read_image(tmp_path / "a.jpg"), _synthetic())
    assert read_image_with_meta(tmp_path / "b.png")[1]["source_format"] == "jpeg"
    assert read_image_with_meta(tmp_path / "c.dcm")[1]["source_format"] == "png"


@pytest.mark.parametrize("fmt,what", [("GIF", "GIF"), ("BMP", "BMP"), ("TIFF", "TIFF"), ("WEBP", "WebP")])
def test_other_image_formats_are_refused(fmt, what):
    data = _pil_bytes(Image.fromarray(_synthetic()).convert("RGB"), fmt)
    with pytest.raises(ImageError) as info:
        decode_bytes(data, name=f"x.{fmt.lower()}")
    assert "accepted formats: png, jpeg, dicom" in str(info.value)
    assert str(info.value).startswith(f"x.{fmt.lower()}: ")
    if what:
        assert what in info.value.reason


@pytest.mark.parametrize("data", [b"", b"hello, this is text\n" * 20, bytes(range(256)) * 3, b"\x89PN"])
def test_non_images_are_refused(data):
    with pytest.raises(ImageError, match="accepted formats|empty"):
        decode_bytes(data)


def test_formats_limit(tmp_path):
    jpeg = _pil_bytes(Image.fromarray(_synthetic()), "JPEG")
    with pytest.raises(ImageError, match="jpeg files are not accepted here; accepted formats: png"):
        decode_bytes(jpeg, limits=DecodeLimits(formats=("png",)))
    assert decode_bytes(jpeg, limits=DecodeLimits(formats=["JPG"])).shape == (48, 64)
    with pytest.raises(CxrError, match="formats"):
        DecodeLimits(formats=("png", "gif"))
    with pytest.raises(CxrError):
        DecodeLimits(formats="png")
    with pytest.raises(CxrError):
        DecodeLimits(max_pixels=0)


# -- files and sizes ---------------------------------------------------------------------------------------------
def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ImageError, match="file not found") as info:
        read_image(tmp_path / "nope.png")
    assert info.value.path == str(tmp_path / "nope.png")
    with pytest.raises(ImageError, match="directory"):
        read_image(tmp_path)


def test_max_bytes_is_checked_before_reading(tmp_path):
    path = tmp_path / "big.png"
    path.write_bytes(_pil_bytes(Image.fromarray(_synthetic()), "PNG"))
    with pytest.raises(ImageError, match="max_bytes"):
        read_image(path, limits=DecodeLimits(max_bytes=100))
    with pytest.raises(ImageError, match="max_bytes"):
        decode_bytes(path.read_bytes(), limits=DecodeLimits(max_bytes=100))


def test_max_pixels_is_configurable():
    png = _pil_bytes(Image.fromarray(_synthetic()), "PNG")
    with pytest.raises(ImageError, match="64 x 48 = 3072 pixels"):
        decode_bytes(png, limits=DecodeLimits(max_pixels=3071))
    assert decode_bytes(png, limits=DecodeLimits(max_pixels=3072)).shape == (48, 64)


def _refused_cheaply(data: bytes) -> ImageError:
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(ImageError, match="max_pixels") as info:
            decode_bytes(data, name="bomb")
        elapsed = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert elapsed < 0.5 and peak < 2_000_000, (elapsed, peak)
    return info.value


def test_png_decompression_bomb_is_refused_before_decoding():
    data = _bomb_png(100_000, 100_000)
    assert len(data) < 200
    err = _refused_cheaply(data)
    assert "100000 x 100000" in err.reason


def test_jpeg_decompression_bomb_is_refused_before_decoding():
    jpeg = bytearray(_pil_bytes(Image.fromarray(_synthetic()), "JPEG"))
    sof = jpeg.index(b"\xff\xc0")
    jpeg[sof + 5 : sof + 9] = struct.pack(">HH", 65000, 65000)
    _refused_cheaply(bytes(jpeg))


def test_png_chunk_claiming_gigabytes_is_refused_before_decoding():
    # Found by fuzzing: OpenCV allocates what a chunk's length field says (GBs for a 200-byte file).
    png = bytearray(_pil_bytes(Image.fromarray(_synthetic()), "PNG"))
    idat = png.index(b"IDAT") - 4
    png[idat : idat + 4] = struct.pack(">I", 0x7F001541)
    start = time.perf_counter()
    with pytest.raises(ImageError, match="truncated PNG: the b'IDAT' chunk"):
        decode_bytes(bytes(png[:200]))
    assert time.perf_counter() - start < 0.2


def test_jpeg_with_thousands_of_scans_is_refused():
    jpeg = _pil_bytes(Image.fromarray(_synthetic()), "JPEG")
    with pytest.raises(ImageError, match="scans"):
        decode_bytes(jpeg[:-2] + b"\xff\xda\x00\x02" * 1001 + b"\xff\xd9")


def test_header_walks_are_capped():
    too_many_segments = b"\xff\xd8" + b"\xff\xfe\x00\x02" * 10_001 + b"\xff\xd9"
    with pytest.raises(ImageError, match="more than 10000 segments"):
        decode_bytes(too_many_segments)


# -- truncation and corruption -----------------------------------------------------------------------------------
@pytest.mark.parametrize("fraction", [0.5, 0.9, 0.99])
def test_truncated_real_png_is_refused(real_png, fraction):
    with pytest.raises(ImageError, match="truncated PNG"):
        decode_bytes(real_png[: int(len(real_png) * fraction)], name="cut.png")


@pytest.mark.parametrize("fraction", [0.5, 0.9, 0.99])
def test_truncated_jpeg_is_refused(fraction):
    rng = np.random.default_rng(0)
    jpeg = _pil_bytes(Image.fromarray(rng.integers(0, 255, (256, 256), dtype=np.uint8)), "JPEG", quality=95)
    with pytest.raises(ImageError, match="truncated JPEG"):
        decode_bytes(jpeg[: int(len(jpeg) * fraction)])


def test_corrupt_png_crc_is_refused():
    png = bytearray(_pil_bytes(Image.fromarray(_synthetic()), "PNG"))
    idat = png.index(b"IDAT")
    png[idat + 10] ^= 0xFF
    with pytest.raises(ImageError, match="corrupt PNG"):
        decode_bytes(bytes(png))


def test_jpeg_without_frame_header_is_refused():
    with pytest.raises(ImageError, match="frame header"):
        decode_bytes(b"\xff\xd8\xff\xe0\x00\x04ab\xff\xda\x00\x02" + b"\x00" * 20)


# -- property tests: nothing but ImageError escapes, nothing hangs -----------------------------------------------
def _check_outcome(data: bytes) -> None:
    try:
        out = decode_bytes(data, name="fuzz", limits=SMALL_LIMITS)
    except ImageError as exc:
        assert exc.reason and str(exc).startswith("fuzz: ")
    else:
        assert out.dtype == np.uint8 and out.ndim == 2


@st.composite
def _mutations(draw, size: int):
    """A short list of edits: ("flip", pos, mask) / ("insert", pos, bytes) / ("cut", pos)."""
    edits = []
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "flip", "insert", "cut"]))
        pos = draw(st.integers(0, size - 1))
        if kind == "flip":
            edits.append((kind, pos, draw(st.integers(1, 255))))
        elif kind == "insert":
            edits.append((kind, pos, draw(st.binary(min_size=1, max_size=16))))
        else:
            edits.append((kind, pos, None))
    return edits


def _apply(data: bytes, edits) -> bytes:
    buf = bytearray(data)
    for kind, pos, arg in edits:
        pos = min(pos, max(len(buf) - 1, 0))
        if kind == "flip" and buf:
            buf[pos] ^= arg
        elif kind == "insert":
            buf[pos:pos] = arg
        elif kind == "cut":
            del buf[pos:]
    return bytes(buf)


@_fast(30)
@given(st.binary(max_size=600))
def test_random_bytes_only_raise_image_error(data):
    _check_outcome(data)
    _check_outcome(b"\x89PNG\r\n\x1a\n" + data)
    _check_outcome(b"\xff\xd8\xff" + data)


_PNG_BASE = _pil_bytes(Image.fromarray(_synthetic(96, 80)), "PNG")
_JPEG_BASE = _pil_bytes(Image.fromarray(_synthetic(96, 80)).convert("RGB"), "JPEG", quality=90)


@_fast(40)
@given(_mutations(len(_PNG_BASE)))
def test_mutated_png_only_raises_image_error(edits):
    _check_outcome(_apply(_PNG_BASE, edits))


@_fast(40)
@given(_mutations(len(_JPEG_BASE)))
def test_mutated_jpeg_only_raises_image_error(edits):
    _check_outcome(_apply(_JPEG_BASE, edits))


def test_mutated_real_nih_png_only_raises_image_error(shared_data):
    # A fixed, seeded sweep over a real (256-px) NIH file: flips in the header, the data and the tail.
    data = (shared_data / "nih-sample" / "images" / "00000100_000.png").read_bytes()
    rng = np.random.default_rng(7)
    for pos in [*range(8, 40, 3), *rng.integers(40, len(data), 12).tolist(), len(data) - 6]:
        mutated = bytearray(data)
        mutated[pos] ^= 0x5A
        _check_outcome(bytes(mutated))
