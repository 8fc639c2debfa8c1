"""The DICOM node's result writers: the TID 1500 Comprehensive SR and the RGB Secondary Capture."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sr.codedict import codes as codedict
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

hd = pytest.importorskip("highdicom")

from cxrkit import RESEARCH_NOTICE  # noqa: E402
from cxrkit.data.labels import NIH_FINDINGS  # noqa: E402
from cxrkit.deploy.dicom import codes  # noqa: E402
from cxrkit.deploy.dicom.results import AlgorithmInfo, FilmResult, FindingResult, StudyResult  # noqa: E402
from cxrkit.deploy.dicom.sc import MAX_SIDE, build_sc, legend, wrap  # noqa: E402
from cxrkit.deploy.dicom.sr import SYNTHETIC_TEXT, ResultWriterError, box_polyline, build_sr  # noqa: E402

COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
ALGO = AlgorithmInfo(name="cxrkit", version="0.1.0", model_id="sha256:0123456789abcdef0123456789abcdef",
                     model_version="2026-12-01T00:00:00Z", trained_on_synthetic=True)
BOX = (40.0, 50.0, 60.0, 80.0)


def make_dx(rows: int = 300, cols: int = 256, *, study_uid: str | None = None, seed: int = 0) -> Dataset:
    """A DX For Presentation film with a random grey image (so the tests run without the reference data)."""
    rng = np.random.default_rng(seed)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = DX_FOR_PRESENTATION
    ds.SOPClassUID = DX_FOR_PRESENTATION
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "DX"
    ds.PatientName = "Test^Film"
    ds.PatientID = "CXR-TEST-1"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "F"
    ds.StudyDate, ds.StudyTime = "20260101", "120000"
    ds.AccessionNumber, ds.StudyID, ds.ReferringPhysicianName = "ACC1", "1", ""
    ds.SeriesNumber, ds.InstanceNumber = 1, 1
    ds.BodyPartExamined, ds.ViewPosition = "CHEST", "PA"
    ds.PatientOrientation = ["L", "F"]
    ds.ImagerPixelSpacing = [0.2, 0.2]
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = rng.integers(0, 256, (rows, cols), dtype=np.uint8).tobytes()
    return ds


def make_film(ds: Dataset, image: np.ndarray | None = None, *, names=("Pneumothorax", "Effusion", "Odd\\Label"),
              quality_ok: bool = True) -> FilmResult:
    image = ds.pixel_array.astype(np.uint8) if image is None else image
    h, w = image.shape
    heat = np.zeros((h, w), np.float32)
    x, y, bw, bh = (int(v) for v in BOX)
    heat[y:y + bh, x:x + bw] = 1.0
    findings = [FindingResult(names[0], 0.91, 0.5, True, (BOX,)),
                FindingResult(names[1], 0.12, 0.4, False),
                FindingResult(names[2], 0.77, 0.6, True, ())]
    return FilmResult(sop_instance_uid=str(ds.SOPInstanceUID), sop_class_uid=str(ds.SOPClassUID), image=image,
                      findings=findings, abnormality=0.91, quality_ok=quality_ok,
                      quality_reason="ok" if quality_ok else "image too dark", heatmaps={names[0]: heat},
                      heatmap_method="gradcam")


def make_study(films, sources, priority=0, reason="urgent finding: Pneumothorax") -> StudyResult:
    return StudyResult(study_instance_uid=str(sources[0].StudyInstanceUID), films=films, priority=priority,
                       priority_reason=reason, abnormality=max(f.abnormality for f in films),
                       skipped=[("3f2a9c", "not a chest radiograph")])


def write_sr(study, sources, tmp_path: Path, **kw) -> Path:
    sr = build_sr(study, sources, ALGO, series_instance_uid=generate_uid(), sop_instance_uid=generate_uid(), **kw)
    path = tmp_path / "sr.dcm"
    pydicom.dcmwrite(path, sr, enforce_file_format=True)
    return path


def content_items(ds: Dataset):
    for item in ds.get("ContentSequence", []):
        yield item
        yield from content_items(item)


def assert_dsrdump_clean(path: Path) -> str:
    exe = shutil.which("dsrdump")
    if exe is None:
        pytest.skip("dcmtk's dsrdump is not installed")
    run = subprocess.run([exe, "-v", "+Pt", str(path)], capture_output=True, text=True, timeout=30)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out
    low = out.lower()
    assert "error" not in low and "warn" not in low, out
    return out


# ---- codes ----------------------------------------------------------------------------------------------------

def test_every_nih_finding_has_a_code_and_standard_ones_are_in_pydicoms_tables():
    from pydicom.sr._concepts_dict import concepts

    known: dict[tuple[str, str], set[str]] = {}
    for scheme, kws in concepts.items():
        for entries in kws.values():
            for value, (meaning, _) in entries.items():
                known.setdefault((scheme, value), set()).add(meaning)
    for name in NIH_FINDINGS:
        code = codes.finding_code(name)
        if codes.is_private(code):
            assert code.value == name
        else:
            assert code.meaning in known[(code.scheme_designator, code.value)], name
    assert codes.finding_code("Pneumothorax").value == "36118008"
    for c in (codes.PROBABILITY, codes.PRESENT, codes.ABSENT, codes.QUALITY_PASSED, codes.QUALITY_FAILED,
              codes.PRIORITY, codes.ALGORITHM_FAMILY, codes.PROCEDURE_REPORTED):
        assert c.meaning in known[(c.scheme_designator, c.value)]


def test_unknown_label_names_map_to_the_private_scheme():
    assert codes.finding_code("Something New") == codes.private("Something New")
    odd = codes.finding_code("a\\b\x01")
    assert odd.scheme_designator == codes.PRIVATE_SCHEME and "\\" not in odd.value and odd.value == "a b"
    assert codes.finding_code("").value == "UNNAMED"
    assert codes.priority_code(7) == codes.PRIORITY_CODES[3]


def test_box_polyline_is_a_closed_rectangle_clipped_to_the_image():
    poly = box_polyline((10, 20, 30, 40), rows=50, columns=35)
    assert poly.tolist() == [[10, 20], [35, 20], [35, 50], [10, 50], [10, 20]]


# ---- SR ---------------------------------------------------------------------------------------------------------

def test_sr_round_trips_into_the_same_study_and_highdicom_reads_it_back(tmp_path):
    src = make_dx()
    src2 = make_dx(study_uid=str(src.StudyInstanceUID), seed=1)
    films = [make_film(src), make_film(src2, quality_ok=False)]
    path = write_sr(make_study(films, [src, src2]), [src, src2], tmp_path)

    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == COMPREHENSIVE_SR
    assert ds.StudyInstanceUID == src.StudyInstanceUID and ds.PatientID == src.PatientID
    assert ds.PatientName == src.PatientName and ds.AccessionNumber == "ACC1"
    assert ds.Manufacturer == "cxrkit" and ds.SoftwareVersions == ALGO.version
    assert ds.SeriesNumber == 990
    assert ds.CodingSchemeIdentificationSequence[0].CodingSchemeDesignator == codes.PRIVATE_SCHEME
    evidence = {r.ReferencedSOPInstanceUID for s in ds.CurrentRequestedProcedureEvidenceSequence
                for se in s.ReferencedSeriesSequence for r in se.ReferencedSOPSequence}
    assert evidence == {src.SOPInstanceUID, src2.SOPInstanceUID}

    sr = hd.sr.ComprehensiveSR.from_dataset(ds)
    report = sr.content
    groups = report.get_image_measurement_groups()
    assert len(groups) == 2 * 4  # per film: film group + 3 findings
    calls = {}
    for g in groups:
        for q in g.get_qualitative_evaluations():
            if q.name.value == "111000":
                continue  # highdicom 0.28 also returns the TID 4019 Algorithm Family modifier as an evaluation
            calls.setdefault(g.tracking_identifier, {})[q.name.value] = q.value.value
    assert calls["film 1 Pneumothorax"] == {"36118008": codes.PRESENT.value}
    assert calls["film 1 Effusion"] == {"60046008": codes.ABSENT.value}
    assert calls["film 1"] == {"QUALITY_GATE": codes.QUALITY_PASSED.value}
    assert calls["film 2"] == {"QUALITY_GATE": codes.QUALITY_FAILED.value}
    probs = {g.tracking_identifier: {m.name.value: m.value for m in g.get_measurements()} for g in groups}
    assert probs["film 1 Pneumothorax"] == {codes.PROBABILITY.value: pytest.approx(0.91),
                                            codes.DECISION_THRESHOLD.value: pytest.approx(0.5)}
    assert probs["film 1"][codes.ABNORMALITY_SCORE.value] == pytest.approx(0.91)
    src_refs = {g.tracking_identifier: g.source_images[0].referenced_sop_instance_uid for g in groups}
    assert src_refs["film 2 Effusion"] == src2.SOPInstanceUID

    rois = report.get_planar_roi_measurement_groups()
    assert len(rois) == 2  # one box per film; the positive finding without boxes has no region
    roi = rois[0]
    assert roi.finding_type.value == "36118008"
    assert roi.reference_type == codedict.DCM.ImageRegion
    assert roi.roi.graphic_type == hd.sr.GraphicTypeValues.POLYLINE
    np.testing.assert_allclose(roi.roi.value, box_polyline(BOX, src.Rows, src.Columns))
    assert roi.roi.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID

    items = list(content_items(ds))
    texts = {i.ConceptNameCodeSequence[0].CodeMeaning: i.TextValue for i in items if i.ValueType == "TEXT"}
    assert texts["Research use notice"] == RESEARCH_NOTICE
    assert texts["Model trained on synthetic data"] == SYNTHETIC_TEXT
    assert texts["Priority reason"] == "urgent finding: Pneumothorax"
    assert texts["Film not read"] == "3f2a9c: not a chest radiograph"
    assert texts["Algorithm Version"] == ALGO.model_version
    params = [i.TextValue for i in items if i.ValueType == "TEXT"
              and i.ConceptNameCodeSequence[0].CodeMeaning == "Algorithm Parameters"]
    assert f"model_id={ALGO.model_id}" in params
    reasons = [i.TextValue for i in items if i.ValueType == "TEXT"
               and i.ConceptNameCodeSequence[0].CodeValue == "QUALITY_REASON"]
    assert reasons == ["ok", "image too dark"]
    coded = {(i.ConceptNameCodeSequence[0].CodeValue, i.ConceptCodeSequence[0].CodeValue)
             for i in items if i.ValueType == "CODE"}
    assert (codes.PRIORITY.value, "PRIORITY_0") in coded
    assert ("URGENT_FINDING", "36118008") in coded
    # the unknown label: private scheme, value = the (cleaned) label name
    assert ("Odd Label", codes.PRESENT.value) in coded


def test_sr_document_equals_highdicoms_full_construction(monkeypatch):
    """The writer attaches the content tree after highdicom builds the document around its root (no deep copy);
    the result must be the dataset highdicom's ComprehensiveSR would write from the whole tree."""
    from cxrkit.deploy.dicom import sr as sr_module

    captured = {}
    original = sr_module._document

    def capture(root, evidence, algorithm, **kw):
        captured.update(root=root, evidence=evidence, kw=kw)
        return original(root, evidence, algorithm, **kw)

    monkeypatch.setattr(sr_module, "_document", capture)
    src = make_dx()
    src2 = make_dx(study_uid=str(src.StudyInstanceUID), seed=1)
    films = [make_film(src), make_film(src2, quality_ok=False)]
    fast = build_sr(make_study(films, [src, src2]), [src, src2], ALGO, series_instance_uid=generate_uid(),
                    sop_instance_uid=generate_uid())
    full = hd.sr.ComprehensiveSR(
        evidence=captured["evidence"], content=captured["root"], manufacturer="cxrkit",
        manufacturer_model_name=ALGO.name, software_versions=ALGO.version, is_complete=True, is_final=False,
        is_verified=False, series_description="cxrkit results (research use only)",
        coding_schemes=sr_module.coding_schemes(), **captured["kw"])
    clock = {"ContentDate", "ContentTime", "InstanceCreationDate", "InstanceCreationTime"}
    for ds in (fast, full):  # the contribution's own time stamp differs by the microseconds between the two
        for item in ds.get("ContributingEquipmentSequence", []):
            item.pop("ContributionDateTime", None)
    fast_elems = {e.tag: e for e in fast if e.keyword not in clock}
    full_elems = {e.tag: e for e in full if e.keyword not in clock}
    assert sorted(fast_elems) == sorted(full_elems)
    for tag, elem in full_elems.items():
        assert fast_elems[tag] == elem, elem.keyword
    assert fast.file_meta == full.file_meta
    assert len(list(content_items(fast))) > 40  # the whole tree, not the bare root
    hd.sr.ComprehensiveSR.from_dataset(fast)  # and highdicom parses what the node writes


def test_sr_passes_dsrdump(tmp_path):
    src = make_dx()
    # a private code value over 16 characters goes into LongCodeValue
    film = make_film(src, names=("Pneumothorax", "Pleural_Thickening", "Enlarged Cardiomediastinum"))
    path = write_sr(make_study([film], [src]), [src], tmp_path)
    dump = assert_dsrdump_clean(path)
    assert "TID 1500" in dump and "Research use notice" in dump and "99CXRKIT" in dump
    assert "Enlarged Cardiomediastinum" in dump


def test_sr_of_the_real_cr_film_passes_dsrdump(tmp_path, shared_data):
    from cxrkit.data import read_image

    path = shared_data / "dicom" / "cr_monochrome2_jpeg_baseline.dcm"
    src = pydicom.dcmread(path)
    film = make_film(src, read_image(path))
    out = write_sr(make_study([film], [src]), [src], tmp_path)
    ds = pydicom.dcmread(out)
    assert ds.StudyInstanceUID == src.StudyInstanceUID and ds.PatientID == src.PatientID
    dump = assert_dsrdump_clean(out)
    assert "Pneumothorax" in dump and "POLYLINE" in dump and "TID 1500" in dump


def test_sr_without_the_synthetic_flag_has_no_synthetic_notice(tmp_path):
    src = make_dx()
    sr = build_sr(make_study([make_film(src)], [src], 3, "no positive finding"), [src],
                  AlgorithmInfo("cxrkit", "0.1.0", "sha256:ab", "v1"), series_instance_uid=generate_uid(),
                  sop_instance_uid=generate_uid(), urgent=())
    items = list(content_items(sr))
    names = {i.ConceptNameCodeSequence[0].CodeMeaning for i in items}
    assert "Research use notice" in names and "Model trained on synthetic data" not in names
    assert "Urgent finding" not in names


def test_sr_refuses_what_it_cannot_write():
    src = make_dx()
    film = make_film(src)
    uid = dict(series_instance_uid=generate_uid(), sop_instance_uid=generate_uid())
    with pytest.raises(ResultWriterError, match="no source dataset"):
        build_sr(make_study([film], [src]), [make_dx(study_uid=str(src.StudyInstanceUID))], ALGO, **uid)
    with pytest.raises(ResultWriterError, match="belongs to study"):
        build_sr(make_study([film], [src]), [src, make_dx()], ALGO, **uid)
    with pytest.raises(ResultWriterError, match="no film was read"):
        build_sr(StudyResult(str(src.StudyInstanceUID), [], 3, "", 0.0), [src], ALGO, **uid)
    bad = make_film(src)
    bad.findings[1] = FindingResult("Effusion", float("nan"), 0.4, False)
    with pytest.raises(ResultWriterError, match="finite"):
        build_sr(make_study([bad], [src]), [src], ALGO, **uid)


# ---- SC ---------------------------------------------------------------------------------------------------------

def test_sc_is_rgb_with_burned_in_legend_in_the_same_study(tmp_path):
    src = make_dx(rows=300, cols=600)  # long side in [MIN_SIDE, MAX_SIDE]: kept at its size
    image = np.full((300, 600), 90, np.uint8)  # flat grey so colour can only come from the overlay
    film = make_film(src, image)
    sc = build_sc(film, src, ALGO, series_instance_uid=generate_uid(), sop_instance_uid=generate_uid())
    path = tmp_path / "sc.dcm"
    pydicom.dcmwrite(path, sc, enforce_file_format=True)
    ds = pydicom.dcmread(path)
    assert ds.BurnedInAnnotation == "YES"
    assert ds.PhotometricInterpretation == "RGB" and ds.SamplesPerPixel == 3
    assert ds.StudyInstanceUID == src.StudyInstanceUID and ds.PatientID == src.PatientID
    assert ds.SeriesNumber == 991 and ds.Manufacturer == "cxrkit"
    assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
    px = ds.pixel_array
    assert ds.Columns == 600 and px.shape[1] == 600 and px.shape[0] > 300  # legend band on top
    band = px.shape[0] - 300
    assert px[:band].max() == 255  # white legend text
    film_px = px[band:]
    x, y, w, h = (int(v) for v in BOX)
    inside = film_px[y + h // 2, x + w // 2].astype(int)
    far = film_px[250, 550].astype(int)
    assert inside.max() - inside.min() > 40  # coloured: the heatmap of the positive finding
    assert far.tolist() == [90, 90, 90]  # untouched film where the map is cold


def test_sc_downscales_large_films_and_the_real_cr_works(shared_data):
    from cxrkit.data import read_image

    src = make_dx(rows=2048, cols=1536)
    film = make_film(src, np.zeros((2048, 1536), np.uint8))
    sc = build_sc(film, src, ALGO, series_instance_uid=generate_uid(), sop_instance_uid=generate_uid())
    assert sc.Columns == 768 and sc.Rows > MAX_SIDE - 1  # 2048 -> 1024 rows of film plus the legend band

    path = shared_data / "dicom" / "cr_monochrome2_jpeg_baseline.dcm"
    real = pydicom.dcmread(path)
    sc = build_sc(make_film(real, read_image(path)), real, ALGO, series_instance_uid=generate_uid(),
                  sop_instance_uid=generate_uid())
    assert sc.StudyInstanceUID == real.StudyInstanceUID and sc.PatientOrientation == ["L", "F"]
    assert sc.LossyImageCompression == "01"  # the source was JPEG baseline
    with pytest.raises(ResultWriterError, match="was given the source"):
        build_sc(film, real, ALGO, series_instance_uid=generate_uid(), sop_instance_uid=generate_uid())


def test_sc_legend_says_what_the_picture_shows():
    src = make_dx()
    film = make_film(src, quality_ok=False)
    text = "\n".join(legend(film, ALGO))
    assert "RESEARCH USE ONLY" in text and "SYNTHETIC-DATA MODEL" in text
    assert "Quality gate: FAILED (image too dark)" in text and "Abnormality: 0.910" in text
    assert "Positive: Pneumothorax 0.91, Odd\\Label 0.77" in text and "Negative: Effusion 0.12" in text
    plain = legend(make_film(src), AlgorithmInfo("cxrkit", "0.1.0", "sha256:ab", "v1"))
    assert "Quality gate: ok" in plain and not any("SYNTHETIC" in line for line in plain)
    lines = wrap(["Negative: " + ", ".join(f"Finding{i} 0.{i}" for i in range(40))], 300)
    assert len(lines) > 3 and all(cv2.getTextSize(t, cv2.FONT_HERSHEY_SIMPLEX, 0.35, 1)[0][0] <= 292 for t in lines)


def test_sr_regions_skip_empty_boxes_and_tracking_uids_are_unique():
    src = make_dx()
    film = make_film(src)
    film.findings[0] = FindingResult("Pneumothorax", 0.91, 0.5, True, (BOX, (500.0, 500.0, 10.0, 10.0)))
    film.findings.append(FindingResult("Pneumothorax", 0.2, 0.5, False))  # a repeated label stays distinct
    sr = build_sr(make_study([film], [src]), [src], ALGO, series_instance_uid=generate_uid(),
                  sop_instance_uid=generate_uid())
    uids = [i.UID for i in content_items(sr) if i.ValueType == "UIDREF"
            and i.ConceptNameCodeSequence[0].CodeValue == "112040"]
    assert len(uids) == 1 + 4 + 1 and len(set(uids)) == len(uids)  # film, 4 findings, 1 region (outside box gone)


def test_sc_boxes_follow_the_source_geometry_when_the_image_was_read_smaller():
    from cxrkit.deploy.dicom.sc import render

    src = make_dx(rows=600, cols=600)
    film = make_film(src, np.full((300, 300), 90, np.uint8))  # read at half size; boxes stay in source pixels
    film.heatmaps = {}
    rgb = render(film, ALGO, (600, 600))
    assert rgb.shape[1] == 512  # 300 px scaled up to MIN_SIDE
    band = rgb.shape[0] - 512
    f = 512 / 600
    top, col = band + round(BOX[1] * f), 75  # column 75 lies on both the right and a wrongly scaled box
    assert (rgb[top, col] == 255).all()  # the box's top edge, at the source box scaled to the display
    assert (rgb[band + round(BOX[1] * 512 / 300), col] == 90).all()  # not where image-pixel boxes would put it
