"""Dataset readers: NIH (real sample + generated layouts), CheXpert (real 223k table + tiny JPEG folder), CSV,
DICOM folder, merged datasets, open_dataset, and property tests of the cell parsers."""
from __future__ import annotations

import csv
import gzip
import hashlib
import json
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cxrkit.data.datasets import (CheXpertDataset, CSVDataset, DicomFolderDataset, MergedDataset, NIHDataset,
                                  detect_format, open_dataset)
from cxrkit.data.datasets._parse import parse_age, parse_finding_labels, parse_sex, parse_tri_state
from cxrkit.data.datasets.base import BOX_COLUMNS, TABLE_COLUMNS
from cxrkit.data.datasets.chexpert import apply_uncertainty, resolve_policies
from cxrkit.data.errors import DatasetError
from cxrkit.data.labels import CHEXPERT_OBSERVATIONS, NIH_FINDINGS

FIXTURES = Path(__file__).parent / "fixtures"
NIH_HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
              "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]")


# --------------------------------------------------------------------------------------------------------------
# helpers that build small datasets in the distributed layouts
def write_nih(root: Path, rows, *, subdirs=("images",), gz=False, size=64, bbox_rows=None, extra_files=()):
    """rows: (image, findings, patient, age, sex, view); images spread over ``subdirs`` round-robin."""
    root.mkdir(parents=True, exist_ok=True)
    lines = [NIH_HEADER]
    rng = np.random.default_rng(0)
    for k, (name, findings, pid, age, sex, view) in enumerate(rows):
        lines.append(f"{name},{findings},0,{pid},{age},{sex},{view},2048,2500,0.171,0.171")
        folder = root / subdirs[k % len(subdirs)]
        folder.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / name), rng.integers(0, 255, (size, size), dtype=np.uint8))
    text = "\n".join(lines) + "\n"
    if gz:
        with gzip.open(root / "Data_Entry_2017.csv.gz", "wt") as f:
            f.write(text)
    else:
        (root / "Data_Entry_2017.csv").write_text(text)
    if bbox_rows is not None:  # header and trailing empty columns as in NIH's file
        body = "".join(f"{r},,,\n" for r in bbox_rows)
        (root / "BBox_List_2017.csv").write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\n" + body)
    return root


NIH_ROWS = [
    ("00000001_000.png", "Cardiomegaly", 1, "058Y", "M", "PA"),
    ("00000001_001.png", "Cardiomegaly|Emphysema", 1, "059Y", "M", "AP"),
    ("00000002_000.png", "No Finding", 2, "081Y", "F", "PA"),
    ("00000003_000.png", "Infiltration|Mass|Effusion", 3, "6M", "F", "AP"),
    ("00000004_000.png", "Hernia", 4, "74", "M", "PA"),
]


def write_chexpert(parent: Path, n_patients=3, size=48):
    """A tiny CheXpert-v1.0-small folder with real JPEG files, frontal and lateral views."""
    root = parent / "CheXpert-v1.0-small"
    header = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT_OBSERVATIONS]
    rows, rng = [], np.random.default_rng(1)
    codes = ["1.0", "0.0", "-1.0", ""]
    for p in range(1, n_patients + 1):
        for view, fl, appa in (("view1_frontal", "Frontal", "AP"), ("view2_lateral", "Lateral", "")):
            rel = f"CheXpert-v1.0-small/train/patient{p:05d}/study1/{view}.jpg"
            (parent / rel).parent.mkdir(parents=True, exist_ok=True)
            ok, buf = cv2.imencode(".jpg", rng.integers(0, 255, (size, size), dtype=np.uint8))
            (parent / rel).write_bytes(buf.tobytes())
            labels = [codes[(p + j) % 4] for j in range(len(CHEXPERT_OBSERVATIONS))]
            rows.append([rel, "Female" if p % 2 else "Male", str(40 + p), fl, appa, *labels])
    with open(root / "train.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return root


def csv_label_counts(csv_path: Path) -> Counter:
    """Independent oracle: count finding names in a Data_Entry CSV with the csv module."""
    with open(csv_path, newline="") as f:
        return Counter(t for row in csv.DictReader(f) for t in row["Finding Labels"].split("|"))


# --------------------------------------------------------------------------------------------------------------
# NIH on real files
@pytest.fixture(scope="module")
def nih_sample(shared_data):
    return NIHDataset(shared_data / "nih-sample", bbox_csv=FIXTURES / "ds_nih_bbox_sample.csv")


def test_nih_sample_counts_match_csv(nih_sample, shared_data):
    ds = nih_sample
    csv = shared_data / "nih-sample" / "Data_Entry_2017.csv"
    n = len(pd.read_csv(csv))  # 421 in the full reference data, 20 in the committed subset
    assert len(ds) == n == len(list((shared_data / "nih-sample" / "images").glob("*.png"))) and ds.n_missing == 0
    assert list(ds.table.columns[: len(TABLE_COLUMNS)]) == list(TABLE_COLUMNS)
    counts = csv_label_counts(csv)
    for j, name in enumerate(NIH_FINDINGS):
        assert ds.labels[:, j].sum() == counts[name], name
    no_finding = (ds.labels.sum(axis=1) == 0).sum()
    assert no_finding == counts["No Finding"]
    assert ds.table["patient_id"].nunique() == n
    assert set(ds.table["view"]) <= {"PA", "AP"} and set(ds.table["sex"]) <= {"M", "F"}
    assert ds.source == "nih" and (ds.table["source"] == "nih").all()


def test_nih_sample_reads_rgba_files(nih_sample):
    pytest.importorskip("cxrkit.data.decode")
    rgba = [i for i, p in enumerate(nih_sample.table["path"]) if cv2.imread(p, cv2.IMREAD_UNCHANGED).ndim == 3]
    assert len(rgba) == 2
    for i in rgba:
        sample = nih_sample[i]
        assert sample["image"].shape == (256, 256) and sample["image"].dtype == np.uint8


def test_nih_boxes_and_spacing_scale_to_the_downsized_png(nih_sample, shared_data):
    pytest.importorskip("cxrkit.data.decode")
    ds = nih_sample
    assert len(ds.boxes) == 6 and list(ds.boxes.columns) == list(BOX_COLUMNS)
    i = int(np.flatnonzero(ds.table["image_id"] == "00009745_000.png")[0])
    sample = ds[i]
    # independent computation from the CSV: 2021 x 2021 original at 0.194311 mm, box in the 1024 frame
    meta = pd.read_csv(shared_data / "nih-sample" / "Data_Entry_2017.csv").set_index("Image Index")
    row = meta.loc["00009745_000.png"]
    orig_w, orig_h, sp_x, sp_y = row.iloc[6], row.iloc[7], row.iloc[8], row.iloc[9]
    assert sample["meta"]["pixel_spacing"] == pytest.approx((sp_y * orig_h / 256, sp_x * orig_w / 256))
    (box,) = sample["meta"]["boxes"]
    assert box["label"] == "Cardiomegaly"
    assert box["x"] == pytest.approx(329.413756613757 * 256 / 1024)
    assert box["w"] == pytest.approx(456.194708994709 * 256 / 1024)
    assert box["y"] == pytest.approx(399.847619047619 / 4) and box["h"] == pytest.approx(382.510052910053 / 4)
    assert sample["labels"][NIH_FINDINGS.index("Cardiomegaly")] == 1.0


def test_nih_full_table_keeps_present_images_and_reports_missing(shared_data, caplog):
    full = shared_data / "nih-metadata" / "Data_Entry_2017_v2020.csv.gz"
    table = pd.read_csv(full)  # the real 112,120 rows, or every image of the committed films' patients
    n_rows, n_patients = len(table), table["Patient ID"].nunique()
    n_films = len(list((shared_data / "nih-sample" / "images").glob("*.png")))
    ds = NIHDataset(shared_data / "nih-sample", table=full)
    assert n_rows > n_films and len(ds) == n_films and ds.n_missing == n_rows - n_films
    assert f"{n_rows - n_films} of {n_rows}" in caplog.text
    with pytest.raises(DatasetError, match=f"{n_rows - n_films} of {n_rows} images .* missing"):
        NIHDataset(shared_data / "nih-sample", table=full, missing="error")
    labels_only = NIHDataset(shared_data / "nih-sample", table=full, missing="keep")
    assert len(labels_only) == n_rows and labels_only.table["patient_id"].nunique() == n_patients
    if n_rows > 100_000:  # the real table
        assert (n_rows, n_patients) == (112120, 30805)


# --------------------------------------------------------------------------------------------------------------
# NIH on generated layouts
def test_nih_layout_variants_official_split_and_old_ages(tmp_path):
    root = write_nih(tmp_path / "nih", NIH_ROWS, subdirs=("images_001/images", "images_002/images"), gz=True)
    (root / "train_val_list.txt").write_text("00000001_000.png\n00000001_001.png\n00000003_000.png\n")
    (root / "test_list.txt").write_text("00000002_000.png\n00000004_000.png\n")
    ds = NIHDataset(root)
    t = ds.table.set_index("image_id")
    assert list(t["age"]) == pytest.approx([58, 59, 81, 0.5, 74])
    assert t.loc["00000002_000.png", "official_split"] == "test"
    assert t.loc["00000001_001.png", "official_split"] == "train"
    assert t.loc["00000003_000.png", ["Infiltration", "Mass", "Effusion", "Atelectasis"]].tolist() == [1, 1, 1, 0]
    assert (t.loc["00000002_000.png", list(NIH_FINDINGS)] == 0).all()
    assert Path(t.loc["00000001_001.png", "path"]).parent.parent.name == "images_002"
    assert len(NIHDataset(root, views=("PA",))) == 3


def test_nih_flat_folder_and_trailing_column(tmp_path):
    root = write_nih(tmp_path / "flat", NIH_ROWS[:2], subdirs=(".",))
    text = (root / "Data_Entry_2017.csv").read_text().splitlines()
    # the original 2017 release ends every line with a comma (an extra unnamed column)
    (root / "Data_Entry_2017.csv").write_text("\n".join(line + "," for line in text) + "\n")
    ds = NIHDataset(root)
    assert len(ds) == 2 and ds.table["spacing_x"].iloc[0] == pytest.approx(0.171 * 2048 / 1024)


def test_nih_wrong_columns_and_garbage_are_dataset_errors(tmp_path):
    root = tmp_path / "bad"
    root.mkdir()
    (root / "Data_Entry_2017.csv").write_text("Image,Labels\na.png,Mass\n")
    with pytest.raises(DatasetError, match=r"lacks columns \['Image Index', 'Finding Labels', 'Patient ID'\]"):
        NIHDataset(root)
    root2 = write_nih(tmp_path / "garbage", [("00000001_000.png", "Mass|Dragon", 1, 50, "M", "PA")])
    with pytest.raises(DatasetError, match="Dragon"):
        NIHDataset(root2)
    with pytest.raises(DatasetError, match="no NIH label table"):
        NIHDataset(tmp_path / "bad" / ".." / "garbage" / "images")
    with pytest.raises(DatasetError, match="not found"):
        NIHDataset(tmp_path / "nowhere")


def test_phantom_marker_sets_source_and_box_frame(tmp_path):
    rows = NIH_ROWS[:2]
    boxes = ["00000001_000.png,Cardiomegaly,10,20,30,40", "00000001_001.png,Emphysema,0,0,64,32"]
    root = write_nih(tmp_path / "ph", rows, size=64, bbox_rows=boxes)
    (root / "phantom.json").write_text(json.dumps({"generator": "cxrkit", "seed": 0, "size": 64, "box_frame": 64}))
    ds = NIHDataset(root)
    assert ds.source == "phantom" and ds.table["frame_w"].eq(64).all()
    assert len(ds.boxes) == 2
    pytest.importorskip("cxrkit.data.decode")
    (box,) = ds[0]["meta"]["boxes"]
    assert (box["x"], box["y"], box["w"], box["h"]) == (10, 20, 30, 40)  # image is 64 px: no rescaling


# --------------------------------------------------------------------------------------------------------------
# CheXpert
@pytest.fixture(scope="module")
def chexpert_raw(shared_data):
    path = shared_data / "chexpert_train.csv.gz"
    return CheXpertDataset(shared_data, csv=path, missing="keep"), pd.read_csv(path)


def test_chexpert_full_table_parses_with_ignore_policy(chexpert_raw):
    ds, df = chexpert_raw  # the real 223,414-row table, or the committed generated one in its format
    assert len(ds) == len(df)
    n_patients = df["Path"].str.extract(r"(patient\d+)")[0].nunique()
    assert ds.table["patient_id"].nunique() == n_patients
    if len(df) > 200_000:
        assert (len(df), n_patients) == (223414, 64540)
    for j, name in enumerate(CHEXPERT_OBSERVATIONS):
        col = df[name]
        assert (ds.labels[:, j] == 1).sum() == (col == 1).sum(), name
        assert (ds.labels[:, j] == 0).sum() == (col == 0).sum(), name
        assert np.isnan(ds.labels[:, j]).sum() == (col.isna() | (col == -1)).sum(), name
    assert (ds.table["view"] == "LATERAL").sum() == (df["Frontal/Lateral"] == "Lateral").sum()
    assert set(ds.table["sex"].dropna()) == {"M", "F"}
    assert ds.table["sex"].isna().sum() == (df["Sex"] == "Unknown").sum() >= 1  # the real table has one 'Unknown'
    assert (ds.table["official_split"] == "train").all()


@pytest.mark.parametrize("policy", ["zeros", "ones", "lsr", "lsr-zeros", "chexpert-best"])
def test_chexpert_uncertainty_policies_map_counts(chexpert_raw, policy):
    ds, df = chexpert_raw
    raw = ds.raw_labels
    out = apply_uncertainty(raw, CHEXPERT_OBSERVATIONS, resolve_policies(policy), seed=3)
    for j, name in enumerate(CHEXPERT_OBSERVATIONS):
        unc, col = raw[:, j] == -1, df[name]
        n_unc = int((col == -1).sum())
        assert unc.sum() == n_unc
        if policy == "chexpert-best":
            want = 1.0 if name in ("Atelectasis", "Edema") else 0.0
            assert (out[unc, j] == want).all(), name
        elif policy in ("zeros", "ones"):
            want = 0.0 if policy == "zeros" else 1.0
            assert (out[:, j] == want).sum() == (col == want).sum() + n_unc, name
        else:
            lo, hi = (0.55, 0.85) if policy == "lsr" else (0.0, 0.3)
            v = out[unc, j]
            assert ((v >= lo) & (v <= hi)).all(), name
            if n_unc > 100:
                assert v.std() > 0.05  # drawn, not a constant
        assert np.isnan(out[:, j]).sum() == col.isna().sum()  # blank stays unknown
    again = apply_uncertainty(raw, CHEXPERT_OBSERVATIONS, resolve_policies(policy), seed=3)
    np.testing.assert_array_equal(out, again)


def test_chexpert_blank_zero_dict_policy_and_lsr_seed(chexpert_raw):
    ds, df = chexpert_raw
    raw = ds.raw_labels
    out = apply_uncertainty(raw, CHEXPERT_OBSERVATIONS, resolve_policies({"Edema": "ones"}), blank="zero")
    j = CHEXPERT_OBSERVATIONS.index("Edema")
    assert (out[:, j] == 1).sum() == (df["Edema"].isin([1, -1])).sum()
    k = CHEXPERT_OBSERVATIONS.index("Cardiomegaly")
    assert np.isnan(out[:, k]).sum() == (df["Cardiomegaly"] == -1).sum()  # unlisted: ignore; blank -> 0
    a = apply_uncertainty(raw, CHEXPERT_OBSERVATIONS, resolve_policies("lsr"), seed=0)
    b = apply_uncertainty(raw, CHEXPERT_OBSERVATIONS, resolve_policies("lsr"), seed=1)
    assert not np.array_equal(a, b, equal_nan=True)
    with pytest.raises(DatasetError, match="not a policy"):
        resolve_policies("maybe")
    with pytest.raises(DatasetError, match="unknown observations"):
        resolve_policies({"Dragon": "ones"})


def test_chexpert_tiny_folder_with_jpegs(tmp_path):
    root = write_chexpert(tmp_path)
    ds = open_dataset(root, uncertainty="ones")
    assert isinstance(ds, CheXpertDataset) and len(ds) == 6
    assert set(ds.table["patient_id"]) == {"patient00001", "patient00002", "patient00003"}
    assert set(ds.table["view"]) == {"AP", "LATERAL"}
    assert not np.isnan(ds.labels).all() and (ds.labels != -1).all()
    assert len(open_dataset(tmp_path, frontal_only=True)) == 3  # the parent folder works too
    nih = CheXpertDataset(root, nih_labels=True)
    assert nih.label_names == NIH_FINDINGS
    assert np.isnan(nih.labels[:, NIH_FINDINGS.index("Infiltration")]).all()
    raw = CheXpertDataset(root).table
    np.testing.assert_array_equal(nih.labels[:, NIH_FINDINGS.index("Effusion")], raw["Pleural Effusion"])
    np.testing.assert_array_equal(nih.labels[:, NIH_FINDINGS.index("Edema")], raw["Edema"])
    # patient 1's Edema is uncertain (-1): unknown under "ignore", positive under "ones"
    assert np.isnan(raw["Edema"].iloc[0]) and ds.table["Edema"].iloc[0] == 1.0
    pytest.importorskip("cxrkit.data.decode")
    sample = ds[0]
    assert sample["image"].shape == (48, 48) and sample["meta"]["source"] == "chexpert"


def test_chexpert_valid_csv_is_the_held_out_test_split(tmp_path):
    header = ",".join(["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT_OBSERVATIONS])
    row = "CheXpert-v1.0-small/valid/patient64541/study1/view1_frontal.jpg,Male,73,Frontal,AP" + ",1.0" * 14
    (tmp_path / "valid.csv").write_text(f"{header}\n{row}\n")
    ds = CheXpertDataset(tmp_path, csv="valid.csv", missing="keep")
    assert ds.table["official_split"].tolist() == ["test"] and ds.table["patient_id"].tolist() == ["patient64541"]
    with pytest.raises(DatasetError, match="none of the 1 images"):
        CheXpertDataset(tmp_path, csv="valid.csv")


def test_chexpert_missing_columns(tmp_path):
    (tmp_path / "train.csv").write_text("Path,Sex\nx/patient00001/a.jpg,Male\n")
    with pytest.raises(DatasetError, match="lacks columns .*No Finding"):
        CheXpertDataset(tmp_path)


# --------------------------------------------------------------------------------------------------------------
# CSV and DICOM folders
def test_csv_dataset(tmp_path):
    for name in ("a.png", "b.png", "c.png"):
        cv2.imwrite(str(tmp_path / name), np.zeros((8, 8), np.uint8))
    pd.DataFrame({"file": ["a.png", "b.png", "c.png", "gone.png"], "pid": ["p1", "p1", "p2", "p3"],
                  "Age": ["058Y", "40", "", "3"], "sex": ["M", "Female", "", "F"],
                  "Mass": [1, 0, -1, 1], "Pleural Effusion": [0, 1, "", 1]}).to_csv(tmp_path / "l.csv", index=False)
    ds = CSVDataset(tmp_path / "l.csv", image_col="file", patient_col="pid")
    assert len(ds) == 3 and ds.n_missing == 1 and ds.label_names == ("Mass", "Pleural Effusion")
    assert ds.table["age"].tolist()[:2] == [58.0, 40.0] and ds.table["sex"].tolist()[:2] == ["M", "F"]
    assert np.isnan(ds.labels[2]).all()  # -1 and blank -> unknown by default
    nih = CSVDataset(tmp_path / "l.csv", image_col="file", patient_col="pid", label_names=NIH_FINDINGS,
                     uncertain="ones")
    assert nih.labels[:, NIH_FINDINGS.index("Effusion")].tolist()[:2] == [0, 1]
    assert nih.labels[2, NIH_FINDINGS.index("Mass")] == 1
    with pytest.raises(DatasetError, match=r"no image column 'path'.*'file'"):
        CSVDataset(tmp_path / "l.csv")
    with pytest.raises(DatasetError, match=r"label columns \['Nodule'\] not found"):
        CSVDataset(tmp_path / "l.csv", image_col="file", label_cols=["Nodule"])
    pd.DataFrame({"path": ["a.png"], "Mass": ["yes"]}).to_csv(tmp_path / "g.csv", index=False)
    with pytest.raises(DatasetError, match="'Mass' has non-numeric label values"):
        CSVDataset(tmp_path / "g.csv")


@pytest.fixture()
def dicom_folder(tmp_path, shared_data):
    import pydicom

    src = shared_data / "dicom"
    folder = tmp_path / "export"
    (folder / "a" / "b").mkdir(parents=True)
    ds = pydicom.dcmread(src / "cr_monochrome2_jpeg_baseline.dcm")
    ds.PatientID = "SECRET-MRN-123"
    ds.PatientName = "Doe^Jane"
    ds.SOPInstanceUID = "1.2.3.4.5"
    ds.save_as(folder / "a" / "chest_no_extension")
    (folder / "a" / "b" / "copy.dcm").write_bytes((src / "cr_monochrome1_same_pixels.dcm").read_bytes())
    (folder / "abdomen.dcm").write_bytes((src / "not_chest_abdomen_ot.dcm").read_bytes())
    (folder / "broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00garbage")
    data = (src / "cr_monochrome2_jpeg_baseline.dcm").read_bytes()
    (folder / "truncated.dcm").write_bytes(data[: len(data) // 2])
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_dicom_folder_problems_and_phi(dicom_folder):
    ds = open_dataset(dicom_folder, progress=False)
    assert isinstance(ds, DicomFolderDataset)
    assert set(ds.table["image_id"]) == {"a/chest_no_extension", "a/b/copy.dcm", "truncated.dcm"}
    reasons = {Path(p["path"]).name: p["reason"] for p in ds.problems}
    assert "modality OT" in reasons["abdomen.dcm"] and "broken.dcm" in reasons
    assert ds.n_other_files == 1
    t = ds.table.set_index("image_id")
    assert t.loc["a/chest_no_extension", "patient_id"] == hashlib.sha256(b"SECRET-MRN-123").hexdigest()[:16]
    everything = ds.table.to_csv()
    assert "SECRET" not in everything and "Doe" not in everything
    assert t.loc["a/chest_no_extension", "view"] == "PA" and t.loc["a/chest_no_extension", "age"] == 62
    assert np.isnan(ds.labels).all()
    kept = DicomFolderDataset(dicom_folder, non_chest="keep", progress=False)
    assert "abdomen.dcm" in set(kept.table["image_id"])
    verified = DicomFolderDataset(dicom_folder, verify=True, progress=False)
    assert "truncated.dcm" not in set(verified.table["image_id"])
    assert any(Path(p["path"]).name == "truncated.dcm" for p in verified.problems)
    sample = verified[0]
    assert sample["image"].dtype == np.uint8 and sample["meta"]["pixel_spacing"] == pytest.approx((0.168, 0.168))


def test_dicom_labels_csv(dicom_folder, tmp_path):
    pd.DataFrame({"SOPInstanceUID": ["1.2.3.4.5"], "Mass": [1], "Pleural Effusion": [-1]}).to_csv(
        tmp_path / "by_uid.csv", index=False)
    ds = DicomFolderDataset(dicom_folder, labels_csv=tmp_path / "by_uid.csv", progress=False)
    row = ds.table.set_index("image_id").loc["a/chest_no_extension"]
    assert row["Mass"] == 1 and np.isnan(row["Effusion"]) and np.isnan(row["Nodule"])
    pd.DataFrame({"filename": ["copy.dcm"], "Nodule": [0]}).to_csv(tmp_path / "by_name.csv", index=False)
    ds = DicomFolderDataset(dicom_folder, labels_csv=tmp_path / "by_name.csv", progress=False)
    assert ds.table.set_index("image_id").loc["a/b/copy.dcm", "Nodule"] == 0
    pd.DataFrame({"uid": ["x"], "Mass": [1]}).to_csv(tmp_path / "nokey.csv", index=False)
    with pytest.raises(DatasetError, match="SOPInstanceUID or filename"):
        DicomFolderDataset(dicom_folder, labels_csv=tmp_path / "nokey.csv", progress=False)


# --------------------------------------------------------------------------------------------------------------
# merging and auto-detection
def test_merged_dataset(tmp_path):
    nih = NIHDataset(write_nih(tmp_path / "nih", NIH_ROWS, bbox_rows=["00000001_000.png,Cardiomegaly,1,2,3,4"]))
    chex = CheXpertDataset(write_chexpert(tmp_path / "cx"), uncertainty="zeros")
    merged = open_dataset([nih.root, chex.root.parent])
    assert isinstance(merged, MergedDataset) and len(merged) == len(nih) + len(chex)
    assert merged.label_names == NIH_FINDINGS
    t = merged.table
    assert t["image_id"].is_unique and t["image_id"].str.startswith(("nih:", "chexpert:")).all()
    cx = t["source"] == "chexpert"
    assert t.loc[cx, "Infiltration"].isna().all() and not t.loc[~cx, "Infiltration"].isna().any()
    np.testing.assert_array_equal(t.loc[cx, "Effusion"].to_numpy(), chex.table["Pleural Effusion"].to_numpy())
    assert merged.boxes["image_id"].tolist() == ["nih:00000001_000.png"]
    pytest.importorskip("cxrkit.data.decode")
    first_cx = int(np.flatnonzero(cx)[0])
    assert merged[first_cx]["image"].shape == (48, 48) and merged[first_cx]["meta"]["source"] == "chexpert"
    assert merged[0]["image"].shape == (64, 64) and len(merged[0]["meta"]["boxes"]) == 1


def test_open_dataset_detection_and_errors(tmp_path, shared_data):
    assert detect_format(shared_data / "nih-sample") == "nih"
    assert detect_format(shared_data / "chexpert_train.csv.gz") == "chexpert"
    assert detect_format(shared_data / "dicom") == "dicom"
    assert detect_format(shared_data / "nih-sample" / "Data_Entry_2017.csv") == "nih"
    csv = shared_data / "nih-sample" / "Data_Entry_2017.csv"
    assert len(open_dataset(csv)) == len(pd.read_csv(csv))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="looked for an NIH table .*CheXpert.*DICOM"):
        open_dataset(tmp_path / "empty")
    with pytest.raises(DatasetError, match="format='jpeg' is not one of"):
        open_dataset(tmp_path / "empty", format="jpeg")
    with pytest.raises(DatasetError, match="dataset not found"):
        open_dataset(tmp_path / "missing")


# --------------------------------------------------------------------------------------------------------------
# property tests: garbage in a table is a DatasetError, never anything else
TOKENS = st.sampled_from([*NIH_FINDINGS, "No Finding", "Infiltrate", "pleural thickening", "", " ", "Dragon", "|"])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(st.text(max_size=30), st.lists(TOKENS, max_size=4).map("|".join)), min_size=1,
                max_size=6))
def test_finding_labels_parser_only_raises_dataset_error(cells):
    try:
        out = parse_finding_labels(pd.Series(cells))
    except DatasetError:
        return
    assert out.shape == (len(cells), 14) and set(np.unique(out.to_numpy())) <= {0.0, 1.0}


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(st.text(max_size=8), st.integers(-5, 300).map(str), st.from_regex(r"\d{1,3}[YMWD]",
                fullmatch=True), st.floats(allow_nan=True)), min_size=1, max_size=6))
def test_age_parser_only_raises_dataset_error(cells):
    try:
        years = parse_age(pd.Series(cells, dtype=object))
    except DatasetError:
        return
    ok = years[~np.isnan(years)]
    assert ((ok >= 0) & (ok <= 130)).all()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(st.sampled_from(["1", "0", "-1", "1.0", "-1.0", "", "2", "x", "nan", "inf"]),
                          st.text(max_size=5), st.floats()), min_size=1, max_size=6),
       st.lists(st.text(max_size=6), min_size=1, max_size=4))
def test_tri_state_and_sex_parsers_only_raise_dataset_error(cells, sexes):
    try:
        v = parse_tri_state(pd.DataFrame({"Edema": pd.Series(cells, dtype=object)}))
        assert set(np.unique(v[~np.isnan(v)])) <= {-1.0, 0.0, 1.0}
    except DatasetError:
        pass
    try:
        assert set(parse_sex(pd.Series(sexes)).dropna()) <= {"M", "F"}
    except DatasetError:
        pass
