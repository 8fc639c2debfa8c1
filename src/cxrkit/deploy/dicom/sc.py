"""The node's picture result: one RGB Secondary Capture per film, the film with the heatmaps of its positive
findings, their boxes and a burned-in legend (findings, abnormality, quality gate, research-use warning).

Patient and study modules come from the source film (highdicom ``SCImage.from_ref_dataset``), so the SC lands in
the film's study next to the SR. The legend is described in docs/dicom.md.
"""
from __future__ import annotations

from typing import Sequence

import cv2
import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from cxrkit import RESEARCH_NOTICE
from cxrkit.deploy.dicom.results import AlgorithmInfo, FilmResult
from cxrkit.deploy.dicom.sr import MANUFACTURER, ResultWriterError, complete_type2
from cxrkit.explain.overlay import BOX_COLOUR, add_caption, draw_boxes, fit_display, overlay

# Films are stored at up to 3k px; an RGB copy that size is ~27 MB per film for a picture meant for a glance, so
# the SC is scaled to at most 1024 px on the long side (and small films up to 512 px so the legend stays legible).
MAX_SIDE = 1024
MIN_SIDE = 512
_FONT = cv2.FONT_HERSHEY_SIMPLEX
HEAT_FLOOR = 0.25  # heat at which the colour overlay reaches full strength
# When the source has no usable PatientOrientation: the conventional display of a frontal chest film (rows run
# towards the patient's left, columns towards the feet). The SC is a picture for a human, not a measurement basis.
DEFAULT_ORIENTATION = ("L", "F")
_BIPED = {"A", "P", "R", "L", "H", "F"}


def _orientation(source: Dataset) -> tuple[str, str]:
    value = source.get("PatientOrientation")
    values = list(value) if isinstance(value, (list, tuple, pydicom.multival.MultiValue)) else []
    if len(values) == 2 and all(str(v) in _BIPED for v in values):
        return str(values[0]), str(values[1])
    return DEFAULT_ORIENTATION


def _caption_scale(width: int) -> float:
    return max(0.35, min(1.0, width / 700))  # the scale add_caption draws with, for wrapping to its width


def wrap(lines: Sequence[str], width: int) -> list[str]:
    """Wrap legend lines at ", " / " " so each fits ``width`` pixels in add_caption's font."""
    scale = _caption_scale(width)
    fits = lambda t: cv2.getTextSize(t, _FONT, scale, 1)[0][0] <= width - 8  # noqa: E731
    out: list[str] = []
    for line in lines:
        words, cur = line.split(" "), ""
        for w in words:
            nxt = f"{cur} {w}" if cur else w
            if cur and not fits(nxt):
                out.append(cur)
                cur = "  " + w
            else:
                cur = nxt
        out.append(cur)
    return out


def legend(film: FilmResult, algorithm: AlgorithmInfo) -> list[str]:
    """The burned-in legend, one string per line (before wrapping)."""
    lines = ["RESEARCH USE ONLY - not for diagnosis or clinical decisions"]
    if algorithm.trained_on_synthetic:
        lines.append("SYNTHETIC-DATA MODEL: trained on synthetic phantom data only")
    if film.quality_ok:
        lines.append("Quality gate: ok")
    else:
        lines.append(f"Quality gate: FAILED ({film.quality_reason or 'no reason given'}) - scores not trusted")
    lines.append(f"Abnormality: {film.abnormality:.3f}")
    pos = [f"{f.name} {f.probability:.2f}" for f in sorted(film.positive_findings, key=lambda f: -f.probability)]
    neg = [f"{f.name} {f.probability:.2f}" for f in sorted(film.findings, key=lambda f: -f.probability)
           if not f.positive]
    lines.append("Positive: " + (", ".join(pos) if pos else "none"))
    if neg:
        lines.append("Negative: " + ", ".join(neg))
    method = f", heatmap {film.heatmap_method}" if film.heatmap_method and film.heatmaps else ""
    lines.append(f"{algorithm.name} {algorithm.version}, model {algorithm.model_version} "
                 f"({algorithm.model_id[:23]}){method}")
    return lines


def render(film: FilmResult, algorithm: AlgorithmInfo, source_shape: tuple[int, int] | None = None) -> np.ndarray:
    """The SC's RGB picture: film (scaled into [MIN_SIDE, MAX_SIDE]), combined heatmap of the positive findings,
    their boxes with names, and the legend band on top. Boxes are in source pixels (``source_shape`` = Rows,
    Columns; default: the film image's own shape)."""
    image = np.asarray(film.image)
    if image.dtype != np.uint8 or image.ndim != 2:
        raise ResultWriterError(f"film {film.sop_instance_uid}: image must be uint8 H x W grey, got "
                                f"{image.dtype} {image.shape}")
    display, _ = fit_display(image, MAX_SIDE, MIN_SIDE)
    h, w = display.shape
    src_rows, src_cols = source_shape or image.shape
    fx, fy = w / src_cols, h / src_rows
    positives = film.positive_findings
    maps = [np.asarray(film.heatmaps[p.name], dtype=np.float32) for p in positives if p.name in film.heatmaps]
    if maps:
        # one colour map for all positive findings: the hottest of them at each pixel
        heat = np.clip(np.nan_to_num(np.maximum.reduce(
            [cv2.resize(m, (w, h), interpolation=cv2.INTER_LINEAR) for m in maps])), 0.0, 1.0)
        grey = cv2.cvtColor(display, cv2.COLOR_GRAY2RGB)
        # overlay() tints the whole film (cold = blue); fade the tint out where the map is cold so the reader
        # sees the untouched film outside the hot regions
        weight = np.clip(heat * (1.0 / HEAT_FLOOR), 0.0, 1.0).astype(np.float32)
        rgb = cv2.blendLinear(overlay(display, heat), grey, weight, 1.0 - weight)
    else:
        rgb = cv2.cvtColor(display, cv2.COLOR_GRAY2RGB)
    thickness = max(1, round(max(h, w) / 512))
    scale = _caption_scale(w) * 0.7
    for p in positives:
        boxes = [(b[0] * fx, b[1] * fy, b[2] * fx, b[3] * fy) for b in p.boxes]
        rgb = draw_boxes(rgb, boxes, BOX_COLOUR, thickness)
        for x, y, _, _ in boxes:
            org = (int(round(x)) + 2, max(int(round(y)) - 4, int(18 * scale)))
            cv2.putText(rgb, p.name.encode("ascii", "replace").decode(), org, _FONT, scale, BOX_COLOUR, 1,
                        cv2.LINE_AA)
    return add_caption(rgb, wrap(legend(film, algorithm), w))


def build_sc(film: FilmResult, source: pydicom.Dataset, algorithm: AlgorithmInfo, *, series_instance_uid: str,
             sop_instance_uid: str, series_number: int = 991, instance_number: int = 1) -> pydicom.Dataset:
    """The RGB Secondary Capture of one film (burned-in legend, BurnedInAnnotation YES) in the source's study."""
    if str(source.SOPInstanceUID) != film.sop_instance_uid:
        raise ResultWriterError(f"film {film.sop_instance_uid} was given the source {source.SOPInstanceUID}: pass "
                                "the dataset the film was read from")
    complete_type2(source)
    rgb = np.ascontiguousarray(render(film, algorithm, (int(source.Rows), int(source.Columns))))
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source, pixel_array=rgb, photometric_interpretation="RGB", bits_allocated=8,
        coordinate_system="PATIENT", patient_orientation=_orientation(source),
        series_instance_uid=series_instance_uid, series_number=series_number, sop_instance_uid=sop_instance_uid,
        instance_number=instance_number, manufacturer=MANUFACTURER, manufacturer_model_name=algorithm.name,
        software_versions=algorithm.version, series_description="cxrkit overlays (research use only)",
        transfer_syntax_uid=ExplicitVRLittleEndian)
    sc.BurnedInAnnotation = "YES"
    sc.RecognizableVisualFeatures = source.get("RecognizableVisualFeatures", "NO") or "NO"
    if str(source.get("LossyImageCompression", "00")) == "01":
        sc.LossyImageCompression = "01"  # once lossy, every derived image says so (PS3.3 C.7.6.1.1.5)
    ref = Dataset()
    ref.ReferencedSOPClassUID = source.SOPClassUID
    ref.ReferencedSOPInstanceUID = source.SOPInstanceUID
    sc.SourceImageSequence = [ref]
    sc.DerivationDescription = ("cxrkit heatmap overlay and legend on the source film, scaled to "
                                f"{rgb.shape[1]}x{rgb.shape[0]}")[:1024]
    sc.ImageComments = RESEARCH_NOTICE
    return sc
