"""cxrkit.data.dicom: real files, generated encodings and VOI policies, refusals, PHI-free metadata."""
from __future__ import annotations

import io
import time
import tracemalloc

import cv2
import numpy as np
import pydicom
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.pixels.encoders import JPEG2000LosslessEncoder, JPEGLSLosslessEncoder, RLELosslessEncoder
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, JPEG2000Lossless, JPEGLSLossless, RLELossless, generate_uid,
)

from cxrkit.data.decode import DecodeLimits, decode_bytes, read_image, read_image_with_meta
from cxrkit.data.dicom import decode_dicom, dicom_meta, is_chest_radiograph_header, parse_age
from cxrkit.data.errors import ImageError

# Damaged and deliberately non-standard test files make pydicom warn; the warnings are expected here.
pytestmark = [pytest.mark.filterwarnings("ignore:Invalid value for VR"),
              pytest.mark.filterwarnings("ignore:End of file reached before delimiter"),
              pytest.mark.filterwarnings("ignore:The decoded RLE segment")]

_ENCODERS = {RLELossless: RLELosslessEncoder, JPEG2000Lossless: JPEG2000LosslessEncoder,
             JPEGLSLossless: JPEGLSLosslessEncoder}


def encodings(*syntaxes):
    """Parameters for tests that encode with pydicom: JPEG-LS needs pyjpegls, JPEG 2000 pylibjpeg-openjpeg."""
    ids = {RLELossless: "rle", JPEG2000Lossless: "j2k", JPEGLSLossless: "jpegls"}
    return [pytest.param(s, id=ids[s], marks=pytest.mark.skipif(
        not _ENCODERS[s].is_available, reason=f"pydicom cannot encode {s.name} here (install pyjpegls / "
                                              "pylibjpeg-openjpeg)")) for s in syntaxes]


META_KEYS = {"view", "sex", "age", "pixel_spacing", "modality", "body_part", "photometric", "bits_stored",
             "source_format", "frames", "mapping"}


# -- builders ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def real8(request) -> np.ndarray:
    """256 x 256 uint8 chest pixels: the real SIIM CR downsized, or a synthetic ramp without shared data."""
    try:
        root = request.getfixturevalue("shared_data")
    except pytest.skip.Exception:
        ramp = np.add.outer(np.arange(256), np.arange(256)) // 2
        return ramp.astype(np.uint8)
    image = read_image(root / "dicom" / "cr_monochrome2_jpeg_baseline.dcm")
    return cv2.resize(image, (256, 256), interpolation=cv2.INTER_AREA)


def make_ds(stored: np.ndarray, *, bits: int = 12, signed: bool = False, photometric: str = "MONOCHROME2",
            frames: int | None = None, **tags) -> Dataset:
    """A CR/DX image Dataset holding ``stored`` natively (uint8/uint16/int16, H x W [x 3] or F x H x W)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID, ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientName, ds.PatientID, ds.PatientBirthDate = "CR", "Doe^Jane", "PID-SECRET-42", "19600101"
    ds.Rows, ds.Columns = stored.shape[-2:] if stored.ndim == 2 or frames else stored.shape[:2]
    ds.SamplesPerPixel = 3 if photometric == "RGB" else 1
    if photometric == "RGB":
        ds.PlanarConfiguration = 0
    if frames:
        ds.NumberOfFrames = frames
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = stored.dtype.itemsize * 8
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits - 1, int(signed)
    for keyword, value in tags.items():
        setattr(ds, keyword, value)
    ds.PixelData = np.ascontiguousarray(stored).tobytes()
    return ds


def to_bytes(ds: Dataset, preamble: bool = True) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=preamble)
    return buf.getvalue()


def decode(ds: Dataset):
    return read_image_with_meta_bytes(to_bytes(ds))


def read_image_with_meta_bytes(data: bytes):
    from cxrkit.data.decode import decode_bytes_with_meta

    return decode_bytes_with_meta(data, name="gen.dcm")


def percentile_map(values: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(values.astype(np.float64), [0.5, 99.5])
    return np.clip(np.rint((values - lo) * 255.0 / (hi - lo)), 0, 255)


def linear_window(x: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2.1 onto 0-255, written out independently of pydicom."""
    c, w = center - 0.5, width - 1
    y = ((x - c) / w + 0.5) * 255
    return np.rint(np.where(x <= c - w / 2, 0, np.where(x > c + w / 2, 255, y)))


def assert_close(out: np.ndarray, expected: np.ndarray, tol: int = 1) -> None:
    assert out.dtype == np.uint8 and out.shape == expected.shape
    assert np.abs(out.astype(int) - expected).max() <= tol


def stored12(real8: np.ndarray) -> np.ndarray:
    return (real8.astype(np.uint16) * 16 + (real8 % 16)).astype(np.uint16)


# -- the real files ------------------------------------------------------------------------------------------------
def test_monochrome1_is_the_exact_inverse(shared_data):
    mono2 = read_image(shared_data / "dicom" / "cr_monochrome2_jpeg_baseline.dcm")
    mono1 = read_image(shared_data / "dicom" / "cr_monochrome1_same_pixels.dcm")
    assert mono2.shape == (1024, 1024) and mono2.dtype == np.uint8
    np.testing.assert_array_equal(mono1, 255 - mono2)


def test_real_cr_metadata_without_phi(shared_data):
    path = shared_data / "dicom" / "cr_monochrome2_jpeg_baseline.dcm"
    _, meta = read_image_with_meta(path)
    assert set(meta) == META_KEYS
    assert meta == {**meta, "view": "PA", "sex": "M", "age": 62.0, "pixel_spacing": (0.168, 0.168),
                    "modality": "CR", "body_part": "CHEST", "photometric": "MONOCHROME2", "bits_stored": 8,
                    "source_format": "dicom", "frames": 1, "mapping": "identity"}
    patient_id = str(pydicom.dcmread(path).PatientID)
    assert patient_id not in repr(meta)
    assert is_chest_radiograph_header(meta) == (True, "modality CR, body part CHEST, view PA")


def test_abdominal_ot_film_decodes_and_is_flagged(shared_data):
    image, meta = read_image_with_meta(shared_data / "dicom" / "not_chest_abdomen_ot.dcm")
    assert image.shape == (512, 512) and image.dtype == np.uint8 and image.std() > 10
    assert meta["modality"] == "OT" and "body_part" in meta
    ok, reason = is_chest_radiograph_header(meta)
    assert not ok and "OT" in reason


# -- generated encodings and intensity policies -------------------------------------------------------------------
def test_8bit_without_window_is_identity(real8):
    out, meta = decode(make_ds(real8, bits=8))
    np.testing.assert_array_equal(out, real8)
    assert meta["mapping"] == "identity"


def test_6bit_is_scaled_to_full_range(real8):
    stored = (real8 >> 2).astype(np.uint8)
    out, meta = decode(make_ds(stored, bits=6))
    assert meta["mapping"] == "scaled"
    assert_close(out, np.rint(stored * 255.0 / 63))


def test_12bit_rescaled_without_window_uses_percentiles(real8):
    stored = stored12(real8)
    out, meta = decode(make_ds(stored, RescaleSlope=2, RescaleIntercept=-100))
    assert meta["mapping"] == "percentile" and meta["bits_stored"] == 12
    assert_close(out, percentile_map(stored * 2.0 - 100))


def test_padding_is_ignored_by_the_default_window(real8):
    stored = stored12(real8).astype(np.int16) - 1000
    stored[:, :80] = -2000  # a third of the film is collimator padding
    out, _ = decode(make_ds(stored, bits=16, signed=True, PixelPaddingValue=-2000))
    body = stored[:, 80:].astype(np.float64)
    lo, hi = np.percentile(body, [0.5, 99.5])
    assert_close(out, np.clip(np.rint((stored - lo) * 255 / (hi - lo)), 0, 255))
    assert (out[:, :80] == 0).all()


def test_16bit_rescaled_with_window(real8):
    stored = (stored12(real8).astype(np.uint32) * 16).astype(np.uint16)
    ds = make_ds(stored, bits=16, RescaleSlope=0.5, RescaleIntercept=-1000, WindowCenter=[500, 40],
                 WindowWidth=[1200, 400])
    out, meta = decode(ds)
    assert meta["mapping"] == "window"
    assert_close(out, linear_window(stored * 0.5 - 1000, 500, 1200))


def test_sigmoid_window(real8):
    stored = stored12(real8)
    out, _ = decode(make_ds(stored, WindowCenter=2000, WindowWidth=1500, VOILUTFunction="SIGMOID"))
    expected = np.rint(255 / (1 + np.exp(-4 * (stored - 2000.0) / 1500)))
    assert_close(out, expected)


def test_invalid_window_falls_back_to_percentiles(real8):
    stored = stored12(real8)
    out, meta = decode(make_ds(stored, WindowCenter=2000, WindowWidth=0))
    assert meta["mapping"] == "percentile"
    assert_close(out, percentile_map(stored))


def test_dx_with_voi_lut_sequence(real8):
    stored = stored12(real8)
    # A gamma-like LUT that (as vendors often do) declares 16-bit entries but fills only 12 bits.
    lut = np.rint(4095 * (np.arange(4096) / 4095) ** 0.6).astype(np.uint16)
    item = Dataset()
    item.add_new(0x00283002, "US", [4096, 0, 16])
    item.add_new(0x00283006, "US", lut.tolist())
    ds = make_ds(stored, Modality="DX", WindowCenter=100, WindowWidth=10)  # the LUT takes precedence
    ds.VOILUTSequence = Sequence([item])
    out, meta = decode(ds)
    assert meta["mapping"] == "voi_lut" and meta["modality"] == "DX"
    assert_close(out, np.rint(lut[stored] * 255.0 / 4095))


@pytest.mark.parametrize("policy", ["window", "percentile"])
def test_monochrome1_inverts_every_policy(real8, policy):
    stored = stored12(real8)
    tags = {"WindowCenter": 1800, "WindowWidth": 2500} if policy == "window" else {}
    mono2, _ = decode(make_ds(stored, **tags))
    mono1, meta = decode(make_ds(stored, photometric="MONOCHROME1", **tags))
    assert meta["mapping"] == policy
    np.testing.assert_array_equal(mono1, 255 - mono2)


@pytest.mark.parametrize("syntax", encodings(RLELossless, JPEG2000Lossless, JPEGLSLossless))
def test_lossless_encodings_match_native(real8, syntax):
    stored = stored12(real8)
    native, _ = decode(make_ds(stored, WindowCenter=2000, WindowWidth=3000))
    ds = make_ds(stored, WindowCenter=2000, WindowWidth=3000)
    ds.compress(syntax)
    out, meta = decode(ds)
    np.testing.assert_array_equal(out, native)
    assert meta["mapping"] == "window"


def test_multiframe_gives_first_frame(real8):
    stack = np.stack([real8, 255 - real8, real8 // 2])
    out, meta = decode(make_ds(stack, bits=8, frames=3))
    np.testing.assert_array_equal(out, real8)
    assert meta["frames"] == 3


def test_rgb_dicom_becomes_luma(real8):
    rgb = np.stack([real8, np.roll(real8, 7, axis=0), 255 - real8], axis=-1)
    out, meta = decode(make_ds(rgb, bits=8, photometric="RGB"))
    assert meta["photometric"] == "RGB"
    assert_close(out, np.rint(rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114))


def test_decode_dicom_accepts_dataset_bytes_and_path(tmp_path, real8):
    ds = make_ds(real8, bits=8)
    data = to_bytes(ds)
    (tmp_path / "scan.bin").write_bytes(data)
    from_path, _ = decode_dicom(tmp_path / "scan.bin")
    from_bytes, _ = decode_dicom(data)
    from_ds, _ = decode_dicom(pydicom.dcmread(io.BytesIO(data)))
    for out in (from_path, from_bytes, from_ds):
        np.testing.assert_array_equal(out, real8)
    with pytest.raises(ImageError, match="PNG file, not DICOM"):
        decode_dicom(cv2.imencode(".png", real8)[1].tobytes())
    with pytest.raises(ImageError, match="dicom files are not accepted"):
        decode_bytes(data, limits=DecodeLimits(formats=("png", "jpeg")))


# -- refusals ------------------------------------------------------------------------------------------------------
def test_file_without_preamble_is_refused(real8, tmp_path):
    path = tmp_path / "nopreamble.dcm"
    path.write_bytes(to_bytes(make_ds(real8, bits=8), preamble=False))
    with pytest.raises(ImageError, match="preamble") as info:
        read_image(path)
    assert info.value.path == str(path)


def test_file_without_pixel_data_is_refused(real8):
    ds = make_ds(real8, bits=8)
    del ds.PixelData
    with pytest.raises(ImageError, match="no Pixel Data"):
        decode(ds)


@pytest.mark.parametrize("cut", [1, 5000, 60000])
def test_truncated_pixel_data_is_refused(real8, cut):
    data = to_bytes(make_ds(stored12(real8)))
    with pytest.raises(ImageError, match="pixel data"):
        decode_bytes(data[:-cut])


def test_truncated_compressed_pixel_data_is_refused(real8):
    ds = make_ds(stored12(real8))
    ds.compress(RLELossless)
    data = to_bytes(ds)
    with pytest.raises(ImageError):
        decode_bytes(data[: len(data) * 3 // 4])


def _with_fragment(ds: Dataset, keep: float) -> bytes:
    """``ds`` re-encapsulated with its (single) frame cut to the fraction ``keep`` of its bytes."""
    from pydicom.encaps import encapsulate, generate_frames

    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = encapsulate([frame[: int(len(frame) * keep)]])
    return to_bytes(ds)


@pytest.mark.parametrize("keep", [0.05, 0.5, 0.99])
def test_real_jpeg_dicom_with_a_cut_fragment_is_refused_as_truncated(shared_data, tmp_path, keep):
    src = shared_data / "dicom" / "cr_monochrome2_jpeg_baseline.dcm"
    path = tmp_path / "cut.dcm"
    path.write_bytes(_with_fragment(pydicom.dcmread(src), keep))
    with pytest.raises(ImageError, match="truncated JPEG Baseline .* without its end marker"):
        read_image(path)


@pytest.mark.parametrize("keep", [0.05, 0.5, 0.99])
def test_real_jpeg_dicom_cut_short_is_refused_as_truncated(shared_data, keep):
    data = (shared_data / "dicom" / "cr_monochrome2_jpeg_baseline.dcm").read_bytes()
    with pytest.raises(ImageError, match="truncated DICOM: the file ends inside its Pixel Data"):
        decode_bytes(data[: int(len(data) * keep)])


def test_real_jpeg_dicom_with_a_fragment_longer_than_the_element_is_refused(shared_data):
    ds = pydicom.dcmread(shared_data / "dicom" / "cr_monochrome2_jpeg_baseline.dcm")
    pixels = bytearray(ds.PixelData)
    at = 8 + int.from_bytes(pixels[4:8], "little")  # the first fragment's item, after the offset table
    pixels[at + 4: at + 8] = (len(pixels)).to_bytes(4, "little")
    ds.PixelData = bytes(pixels)
    with pytest.raises(ImageError, match="truncated JPEG Baseline .* declares"):
        decode(ds)


@pytest.mark.parametrize("syntax", encodings(JPEG2000Lossless, JPEGLSLossless))
def test_truncated_j2k_and_jpegls_fragments_are_refused(real8, syntax):
    ds = make_ds(real8, bits=8)
    ds.compress(syntax)
    assert decode_bytes(to_bytes(ds)).shape == real8.shape  # intact: decodes
    with pytest.raises(ImageError, match="truncated .* without its end marker"):
        decode_bytes(_with_fragment(ds, 0.6))


def test_huge_rows_columns_are_refused_before_decoding():
    ds = make_ds(np.zeros((2, 2), np.uint16))
    ds.Rows = ds.Columns = 65535
    data = to_bytes(ds)
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(ImageError, match="65535 x 65535 = 4294836225 pixels, over the limit"):
            decode_bytes(data)
        elapsed, peak = time.perf_counter() - start, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert elapsed < 0.5 and peak < 2_000_000, (elapsed, peak)


@pytest.mark.parametrize("syntax", encodings(JPEG2000Lossless, JPEGLSLossless, RLELossless))
def test_codestream_larger_than_rows_columns_is_refused(syntax):
    # A codec decodes to its codestream's own size: a header claiming 64 x 64 must not unpack 128 x 128 pixels.
    big = make_ds(np.arange(128 * 128, dtype=np.uint16).reshape(128, 128) % 4096)
    big.compress(syntax)
    small = make_ds(np.arange(64 * 64, dtype=np.uint16).reshape(64, 64))
    small.compress(syntax)
    small.PixelData = big.PixelData
    with pytest.raises(ImageError, match="128 x 128 pixels but Rows/Columns say 64 x 64" if syntax != RLELossless
                       else "pixel data"):
        decode_bytes(to_bytes(small))


def test_real_jpeg_frame_must_match_rows_columns(shared_data):
    ds = pydicom.dcmread(shared_data / "dicom" / "cr_monochrome2_jpeg_baseline.dcm")
    ds.Rows = 512
    with pytest.raises(ImageError, match="1024 x 1024 pixels but Rows/Columns say 1024 x 512"):
        decode_dicom(ds)


def test_deflated_dataset_decodes_and_its_inflated_size_is_capped(real8):
    ds = make_ds(np.zeros((512, 512), np.uint16))
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    data = to_bytes(ds)
    assert len(data) < 5000  # 512 KB of pixels deflated
    assert decode_bytes(data).shape == (512, 512)
    with pytest.raises(ImageError, match="inflates to more than 100000 bytes"):
        decode_bytes(data, limits=DecodeLimits(max_bytes=100_000))
    deflated_real = make_ds(real8, bits=8)
    deflated_real.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    np.testing.assert_array_equal(decode_bytes(to_bytes(deflated_real)), real8)


def test_non_finite_rescale_is_refused(real8):
    with pytest.raises(ImageError, match="Rescale Slope/Intercept must be finite"):
        decode(make_ds(stored12(real8), RescaleSlope="nan", RescaleIntercept=0))


def test_cut_header_is_refused(real8):
    data = to_bytes(make_ds(real8, bits=8))
    for n in (140, 200, 400):
        with pytest.raises(ImageError):
            decode_bytes(data[:n])


# -- metadata -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text,years", [("061Y", 61.0), ("006M", 0.5), ("014D", 14 / 365.25), ("010W", 70 / 365.25),
                                        ("62", 62.0), (" 45y", 45.0), ("", None), (None, None), ("abc", None),
                                        ("200Y", None), ("12X", None)])
def test_parse_age(text, years):
    assert parse_age(text) == pytest.approx(years) if years is not None else parse_age(text) is None


def test_meta_fields_and_phi(real8):
    ds = make_ds(real8, bits=8, PatientSex="O", PatientAge="003M", ViewPosition="ll", BodyPartExamined="Chest",
                 ImagerPixelSpacing=[0.2, 0.1], Modality="DX")
    meta = dicom_meta(ds)
    assert set(meta) == META_KEYS
    assert (meta["sex"], meta["age"], meta["view"], meta["pixel_spacing"]) == (None, 0.25, "LL", (0.2, 0.1))
    assert meta["mapping"] is None  # set by decoding
    for secret in ("Doe", "PID-SECRET-42", "19600101"):
        assert secret not in repr(meta)
    ok, reason = is_chest_radiograph_header(meta)
    assert not ok and "lateral" in reason
    ds.PixelSpacing = [0.15, 0.15]
    assert dicom_meta(ds)["pixel_spacing"] == (0.15, 0.15)  # PixelSpacing wins over ImagerPixelSpacing


@pytest.mark.parametrize("meta,expected", [
    ({"source_format": "dicom", "modality": "DX", "body_part": "CHEST", "view": "AP"}, True),
    ({"source_format": "dicom", "modality": "CR", "body_part": None, "view": None}, True),
    ({"source_format": "dicom", "modality": "CR", "body_part": "ABDOMEN", "view": "AP"}, False),
    ({"source_format": "dicom", "modality": "CT", "body_part": "CHEST", "view": None}, False),
    ({"source_format": "dicom", "modality": "DX", "body_part": "CHEST", "view": "LATERAL"}, False),
    ({"source_format": "png", "modality": None, "body_part": None, "view": None}, True),
])
def test_is_chest_radiograph_header(meta, expected):
    ok, reason = is_chest_radiograph_header(meta)
    assert ok is expected and reason


# -- property tests -----------------------------------------------------------------------------------------------
def _outcome(data: bytes) -> None:
    try:
        out = decode_bytes(data, name="fuzz.dcm", limits=DecodeLimits(max_pixels=4_000_000))
    except ImageError as exc:
        assert exc.reason and str(exc).startswith("fuzz.dcm: ")
    else:
        assert out.dtype == np.uint8 and out.ndim == 2


_SMALL = np.add.outer(np.arange(40), np.arange(48)).astype(np.uint16) * 50


def _small_dicom(syntax=None) -> bytes:
    ds = make_ds(_SMALL, WindowCenter=2000, WindowWidth=3000, PatientAge="050Y", PixelSpacing=[0.2, 0.2])
    if syntax is not None:
        ds.compress(syntax)
    return to_bytes(ds)


def _small_deflated() -> bytes:
    ds = make_ds(_SMALL, WindowCenter=2000, WindowWidth=3000)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    return to_bytes(ds)


_BASES = [_small_dicom(), _small_deflated(), *(_small_dicom(s) for s, enc in _ENCODERS.items() if enc.is_available)]


@settings(max_examples=40, deadline=None, derandomize=True, database=None)
@given(st.integers(0, len(_BASES) - 1), st.lists(st.tuples(st.sampled_from(["flip", "insert", "cut"]),
                                                           st.floats(0, 1), st.integers(1, 255)), min_size=1,
                                                 max_size=4))
def test_mutated_dicom_only_raises_image_error(base, edits):
    buf = bytearray(_BASES[base])
    for kind, where, value in edits:
        pos = min(int(where * len(buf)), len(buf) - 1)
        if kind == "flip":
            buf[pos] ^= value
        elif kind == "insert":
            buf[pos:pos] = bytes([value]) * (value % 7 + 1)
        else:
            del buf[max(pos, 1):]
    _outcome(bytes(buf))


def test_mutated_real_dicom_only_raises_image_error(shared_data):
    data = (shared_data / "dicom" / "cr_monochrome2_jpeg_baseline.dcm").read_bytes()
    rng = np.random.default_rng(11)
    pixel_start = data.index(b"\xe0\x7f\x10\x00")
    header_positions = rng.integers(128, pixel_start + 16, 24).tolist()
    for pos in [*header_positions, *rng.integers(pixel_start, len(data), 6).tolist()]:
        mutated = bytearray(data)
        mutated[pos] ^= 0xA5
        _outcome(bytes(mutated))
