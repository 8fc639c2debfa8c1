"""The node's structured result: one Comprehensive SR (TID 1500 Measurement Report) per processed study batch.

Built with highdicom from the :class:`~cxrkit.deploy.dicom.results.StudyResult` and the received films (the
evidence), so patient and study modules are copied from the films and the SR lands in the same study. The content
tree and every code are described in docs/dicom.md.
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import highdicom as hd
import highdicom.coding_schemes
import numpy as np
import pydicom
from highdicom.sr import CodedConcept, ContainerContentItem, RelationshipTypeValues
from pydicom.sr.codedict import codes as codes_dict
from pydicom.uid import generate_uid

from cxrkit import RESEARCH_NOTICE
from cxrkit.data.errors import CxrError
from cxrkit.deploy.dicom import codes
from cxrkit.deploy.dicom.results import AlgorithmInfo, FilmResult, FindingResult, StudyResult

MANUFACTURER = "cxrkit"
SYNTHETIC_TEXT = ("The model that produced these results was trained on synthetic phantom data only: its outputs "
                  "say nothing about real patients.")
# TID 1500 row 12: the report-level "Qualitative Evaluations" container (CODE and TEXT evaluations). highdicom
# builds rows 1-11 only, so the writer adds this one itself.
QUALITATIVE_EVALUATIONS = CodedConcept("C0034375", "UMLS", "Qualitative Evaluations")


class ResultWriterError(CxrError):
    """A result object cannot be written from what the node handed over (films without their source, mixed
    studies, non-finite scores). The message names the film or value."""


def coding_schemes() -> list[hd.coding_schemes.CodingSchemeIdentificationItem]:
    """The Coding Scheme Identification item for the private scheme; every writer declares it."""
    return [hd.coding_schemes.CodingSchemeIdentificationItem(
        designator=codes.PRIVATE_SCHEME, name=codes.PRIVATE_SCHEME_NAME,
        responsible_organization=codes.PRIVATE_SCHEME_ORGANISATION)]


def sources_by_uid(films: Iterable[FilmResult], sources: Sequence[pydicom.Dataset],
                   study_instance_uid: str) -> dict[str, pydicom.Dataset]:
    """Map each film to its source dataset; refuse films without a source or sources from another study (the SR
    and SC must land in the study the films came from)."""
    by_uid = {str(ds.SOPInstanceUID): ds for ds in sources}
    for ds in sources:
        if str(ds.get("StudyInstanceUID", "")) != study_instance_uid:
            raise ResultWriterError(
                f"source {ds.SOPInstanceUID} belongs to study {ds.get('StudyInstanceUID', '<none>')}, not "
                f"{study_instance_uid}: pass only the films of the study being reported")
    for film in films:
        if film.sop_instance_uid not in by_uid:
            raise ResultWriterError(f"film {film.sop_instance_uid} has no source dataset: pass the received "
                                    "datasets of every film in the StudyResult")
    return by_uid


def algorithm_identification(algorithm: AlgorithmInfo) -> hd.sr.AlgorithmIdentification:
    """TID 4019: name, version (the model's version) and the bundle's content hash as a parameter."""
    return hd.sr.AlgorithmIdentification(
        name=algorithm.name, version=algorithm.model_version or "unknown",
        parameters=[f"{codes.MODEL_ID}={algorithm.model_id}", f"cxrkit_version={algorithm.version}"],
        family=codes.ALGORITHM_FAMILY, manufacturer=MANUFACTURER)


def _finite(value: float, what: str) -> float:
    v = float(value)
    if not math.isfinite(v):
        raise ResultWriterError(f"{what} is {value!r}: a result writer needs finite scores (check the predictor)")
    return v


def _tracking(root_uid: str, label: str, *parts: str) -> hd.sr.TrackingIdentifier:
    # Derived from the SR's own UID so a re-run of the same delivery writes the same tree.
    return hd.sr.TrackingIdentifier(uid=generate_uid(entropy_srcs=[root_uid, label, *parts]), identifier=label)


def _text(name, value: str) -> hd.sr.TextContentItem:
    return hd.sr.TextContentItem(name=name, value=value, relationship_type=RelationshipTypeValues.CONTAINS)


def _code(name, value) -> hd.sr.CodeContentItem:
    return hd.sr.CodeContentItem(name=name, value=value, relationship_type=RelationshipTypeValues.CONTAINS)


def _append(group, items: Sequence) -> None:
    """Add TEXT evaluations to a TID 1501 group (the template allows them; highdicom's constructor takes CODE
    evaluations only)."""
    group[0].ContentSequence.extend(items)


def box_polyline(box: Sequence[float], rows: int, columns: int) -> np.ndarray:
    """A closed 5-point POLYLINE around an ``(x, y, w, h)`` pixel box, in SCOORD image coordinates (column, row;
    0.0 is the outer edge of the first pixel, so a box of pixels x..x+w-1 runs from x to x+w), clipped to the
    image."""
    x, y, w, h = (float(v) for v in box[:4])
    x0, x1 = np.clip([x, x + max(w, 0.0)], 0.0, float(columns))
    y0, y1 = np.clip([y, y + max(h, 0.0)], 0.0, float(rows))
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]], dtype=np.float32)


def _finding_group(root_uid: str, label: str, key: tuple[str, ...], f: FindingResult, src_image,
                   algo) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    code = codes.finding_code(f.name)
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=_tracking(root_uid, label, *key),
        finding_type=code,
        source_images=[src_image],
        measurements=[
            hd.sr.Measurement(name=codes.PROBABILITY, value=_finite(f.probability, f"{label} probability"),
                              unit=codes.UNIT_ONE),
            hd.sr.Measurement(name=codes.DECISION_THRESHOLD, value=_finite(f.threshold, f"{label} threshold"),
                              unit=codes.UNIT_ONE),
        ],
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(code, codes.PRESENT if f.positive else codes.ABSENT)],
    )


def _region_groups(root_uid: str, label: str, key: tuple[str, ...], f: FindingResult, src: pydicom.Dataset,
                   algo) -> list:
    code = codes.finding_code(f.name)
    rows, columns = int(src.Rows), int(src.Columns)
    out = []
    boxes = [box_polyline(b, rows, columns) for b in f.boxes]
    boxes = [p for p in boxes if p[2, 0] > p[0, 0] and p[2, 1] > p[0, 1]]  # empty once clipped: no region
    for k, poly in enumerate(boxes, 1):
        region = hd.sr.ImageRegion(
            graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
            graphic_data=poly,
            source_image=hd.sr.SourceImageForRegion.from_source_image(src))
        out.append(hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=_tracking(root_uid, f"{label} region {k}", *key),
            referenced_region=region,
            finding_type=code,
            algorithm_id=algo,
            measurements=[hd.sr.Measurement(name=codes.PROBABILITY, value=_finite(f.probability, label),
                                            unit=codes.UNIT_ONE)],
            qualitative_evaluations=[hd.sr.QualitativeEvaluation(code, codes.PRESENT)],
        ))
    return out


def _film_groups(root_uid: str, n: int, film: FilmResult, src: pydicom.Dataset, algo) -> list:
    src_image = hd.sr.SourceImageForMeasurementGroup.from_source_image(src)
    label = f"film {n}"
    film_group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=_tracking(root_uid, label, film.sop_instance_uid),
        algorithm_id=algo,
        source_images=[src_image],
        measurements=[hd.sr.Measurement(name=codes.ABNORMALITY_SCORE,
                                        value=_finite(film.abnormality, f"{label} abnormality"),
                                        unit=codes.UNIT_ONE)],
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(
            codes.QUALITY_GATE, codes.QUALITY_PASSED if film.quality_ok else codes.QUALITY_FAILED)],
    )
    texts = [_text(codes.QUALITY_REASON, film.quality_reason or ("passed" if film.quality_ok else "failed"))]
    if film.heatmap_method and film.heatmaps:
        texts.append(_text(codes.HEATMAP_METHOD, film.heatmap_method))
    _append(film_group, texts)
    groups: list = [film_group]
    for j, f in enumerate(film.findings):
        flabel, key = f"{label} {f.name}", (film.sop_instance_uid, str(j))  # key: unique even for repeated names
        groups.append(_finding_group(root_uid, flabel, key, f, src_image, algo))
        if f.positive:
            groups.extend(_region_groups(root_uid, flabel, key, f, src, algo))
    return groups


def _study_evaluations(study: StudyResult, algorithm: AlgorithmInfo, urgent: Sequence[str]) -> ContainerContentItem:
    items = [_code(codes.PRIORITY, codes.priority_code(study.priority)),
             _text(codes.PRIORITY_REASON, study.priority_reason or "-")]
    urgent_set = set(urgent)
    hits = sorted({f.name for film in study.films if film.quality_ok for f in film.findings
                   if f.positive and f.name in urgent_set})
    items += [_code(codes.URGENT_FINDING, codes.finding_code(name)) for name in hits]
    items.append(_text(codes.RESEARCH_NOTICE, RESEARCH_NOTICE))
    if algorithm.trained_on_synthetic:
        items.append(_text(codes.SYNTHETIC_NOTICE, SYNTHETIC_TEXT))
    items += [_text(codes.FILM_NOT_READ, f"{uid}: {reason}") for uid, reason in study.skipped]
    container = ContainerContentItem(name=QUALITATIVE_EVALUATIONS, relationship_type=RelationshipTypeValues.CONTAINS)
    container.ContentSequence = hd.sr.ContentSequence(items)
    return container


def _image_library(evidence: Sequence[pydicom.Dataset]) -> list[pydicom.Dataset] | None:
    """The films for the TID 1600 Image Library, or None to leave it out. highdicom's projection-radiography
    descriptors need a two-valued PatientOrientation and ImagerPixelSpacing, which many real CR/DX headers lack;
    the library is optional and every group references its film anyway, so it is written only when each film
    can be described."""
    projection = {"CR", "DX", "IO", "MG", "PX", "RF", "RG", "XA"}
    for ds in evidence:
        modality = str(ds.get("Modality", ""))
        if modality in {"CT", "MR", "PT"}:  # cross-sectional descriptors need geometry a chest node never gets
            return None
        if modality in projection and (
                len(ds.get("PatientOrientation") or []) != 2 or len(ds.get("ImagerPixelSpacing") or []) != 2):
            return None
    return list(evidence)


# Type 2 patient/study attributes (PS3.3 C.7.1.1, C.7.2.1): present but possibly empty. Modalities omit some of
# them; highdicom reads them from the evidence, so a missing one is added empty rather than refused.
TYPE2_CONTEXT = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                 "ReferringPhysicianName", "StudyID", "AccessionNumber")


def complete_type2(ds: pydicom.Dataset) -> pydicom.Dataset:
    """Add the missing type 2 patient/study attributes to a received dataset, empty (in memory only)."""
    for keyword in TYPE2_CONTEXT:
        if keyword not in ds:
            setattr(ds, keyword, "")
    return ds


def build_sr(study: StudyResult, sources: Sequence[pydicom.Dataset], algorithm: AlgorithmInfo, *,
             series_instance_uid: str, sop_instance_uid: str, series_number: int = 990, instance_number: int = 1,
             urgent: Sequence[str] = ("Pneumothorax",)) -> pydicom.Dataset:
    """The Comprehensive SR (TID 1500) for one study batch; ``sources`` are the received films (evidence).

    Per film: a measurement group with the abnormality score and the quality gate; per finding a group with its
    probability, threshold and Present/Absent call; per box of a positive finding a planar-ROI group with the box
    as a closed POLYLINE on the source image. At report level: the study priority and its reason, the urgent
    findings, the research-use notice (and the synthetic-data notice), and the films that were not read.
    """
    if not study.films:
        raise ResultWriterError(f"study {study.study_instance_uid}: no film was read, so there is nothing to "
                                "report (write the worklist entry only)")
    by_uid = sources_by_uid(study.films, [complete_type2(ds) for ds in sources], study.study_instance_uid)
    algo = algorithm_identification(algorithm)
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=generate_uid(entropy_srcs=["cxrkit device", algorithm.name, algorithm.model_id]),
        name=algorithm.name, manufacturer_name=MANUFACTURER, model_name=algorithm.model_version or None)
    context = hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(observer_type=codes_dict.DCM.Device,
                                                      observer_identifying_attributes=device))
    groups: list = []
    for n, film in enumerate(study.films, 1):
        groups += _film_groups(sop_instance_uid, n, film, by_uid[film.sop_instance_uid], algo)
    evidence = [by_uid[film.sop_instance_uid] for film in study.films]
    report = hd.sr.MeasurementReport(observation_context=context, procedure_reported=codes.PROCEDURE_REPORTED,
                                     imaging_measurements=groups, referenced_images=_image_library(evidence))
    report[0].ContentSequence.append(_study_evaluations(study, algorithm, urgent))
    return _document(report[0], evidence, algorithm, series_instance_uid=series_instance_uid,
                     series_number=series_number, sop_instance_uid=sop_instance_uid, instance_number=instance_number)


def _document(root: pydicom.Dataset, evidence: Sequence[pydicom.Dataset], algorithm: AlgorithmInfo, *,
              series_instance_uid: str, sop_instance_uid: str, series_number: int,
              instance_number: int) -> pydicom.Dataset:
    """The SR document (patient, study, series, equipment, SR document modules, evidence) around ``root``.

    highdicom's ComprehensiveSR deep-copies and re-parses the whole content tree only to keep a parsed copy and
    to check that every image the tree references is in ``evidence``; on a 14-finding report that was 40-60 % of
    the node's processing time. Both are ours by construction (``sources_by_uid`` has checked every film's
    source), and the evidence sequences highdicom writes list all of ``evidence`` whatever the tree references.
    So highdicom builds the document around the root container alone, and the full tree is attached after:
    the same dataset (``tests/test_dicom_writers.py`` compares the two), without the copy.
    """
    bare = pydicom.Dataset()
    for elem in root:
        if elem.keyword != "ContentSequence":
            bare.add(elem)
    bare.ContentSequence = pydicom.Sequence([])
    sr = hd.sr.ComprehensiveSR(
        evidence=evidence, content=bare, series_instance_uid=series_instance_uid,
        series_number=series_number, sop_instance_uid=sop_instance_uid, instance_number=instance_number,
        manufacturer=MANUFACTURER, manufacturer_model_name=algorithm.name, software_versions=algorithm.version,
        # machine output, nobody has reviewed it: complete but preliminary and unverified
        is_complete=True, is_final=False, is_verified=False,
        series_description="cxrkit results (research use only)", coding_schemes=coding_schemes())
    ds = pydicom.Dataset()  # a plain dataset: highdicom's parsed copy of the bare tree would now be wrong
    for elem in sr:
        ds.add(elem)
    ds.file_meta = sr.file_meta
    ds.ContentSequence = root.ContentSequence
    return ds
