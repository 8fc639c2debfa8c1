"""The phantom chest-radiograph set: determinism, NIH layout, sign boxes, population statistics, errors."""
from __future__ import annotations

import gzip
import json
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from cxrkit.data.errors import CxrError
from cxrkit.data.labels import NIH_FINDINGS
from cxrkit.data.phantom import (Difficulty, DifficultyError, PhantomError, build, build_stats, generate, load_stats,
                                 render_film, render_with_without, resolve_difficulty, sample_population)
from cxrkit.data.phantom import layout
from cxrkit.data.phantom.stats import combo_table, enrich_weights

cv2.setNumThreads(1)
SMALL = 64


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small_set(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("phantom") / "set"
    generate(out, n=40, size=SMALL, seed=7, progress=False)
    return out


# -- determinism --------------------------------------------------------------------------------------------
def test_same_seed_gives_identical_bytes_whatever_the_workers(small_set, tmp_path, monkeypatch):
    monkeypatch.setattr(build, "CHUNK", 8)  # several chunks, so two workers really split the work
    again = tmp_path / "again"
    summary = generate(again, n=40, size=SMALL, seed=7, workers=2, progress=False)
    assert summary.n_images == 40 and summary.reused == 0
    assert _files(small_set) == _files(again)


def test_different_seed_gives_different_films(small_set, tmp_path):
    other = tmp_path / "other"
    generate(other, n=40, size=SMALL, seed=8, progress=False)
    a, b = _files(small_set), _files(other)
    assert a["images/00000001_000.png"] != b["images/00000001_000.png"]
    assert a[layout.TABLE] != b[layout.TABLE]


def test_interrupted_run_resumes_to_the_same_bytes(small_set, tmp_path, monkeypatch):
    monkeypatch.setattr(build, "CHUNK", 8)
    real = build._render_chunk
    calls = {"n": 0}

    def flaky(job):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C during the third chunk
        return real(job)

    out = tmp_path / "resumed"
    monkeypatch.setattr(build, "_render_chunk", flaky)
    with pytest.raises(KeyboardInterrupt):
        generate(out, n=40, size=SMALL, seed=7, progress=False)
    assert json.loads((out / layout.MARKER).read_text())["state"] == "in_progress"
    monkeypatch.setattr(build, "_render_chunk", real)
    summary = generate(out, n=40, size=SMALL, seed=7, progress=False)
    assert summary.reused == 16  # two finished chunks of 8 were kept
    assert _files(out) == _files(small_set)
    assert generate(out, n=40, size=SMALL, seed=7, progress=False).reused == 40  # complete: nothing redrawn


# -- the NIH layout -----------------------------------------------------------------------------------------
def test_table_headers_are_exactly_nih_s(small_set, shared_data):
    real_table = shared_data / "nih-metadata" / "Data_Entry_2017_v2020.csv.gz"
    real_boxes = shared_data / "nih-metadata" / "BBox_List_2017.csv.gz"
    with gzip.open(real_table, "rt") as f:
        assert (small_set / layout.TABLE).read_text().splitlines()[0] == f.readline().rstrip("\n")
    with gzip.open(real_boxes, "rt") as f:
        assert (small_set / layout.BBOX).read_text().splitlines()[0] == f.readline().rstrip("\n")
    assert list(pd.read_csv(small_set / layout.TABLE).columns) == list(pd.read_csv(real_table, nrows=2).columns)
    assert list(pd.read_csv(small_set / layout.BBOX).columns) == list(pd.read_csv(real_boxes, nrows=2).columns)


def test_tables_have_nih_columns_and_boxes_lie_inside(small_set):
    table = pd.read_csv(small_set / layout.TABLE)
    assert list(table.columns) == ["Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age",
                                   "Patient Gender", "View Position", "OriginalImage[Width", "Height]",
                                   "OriginalImagePixelSpacing[x", "y]"]
    assert table["Image Index"].str.fullmatch(r"\d{8}_\d{3}\.png").all()
    assert (table["OriginalImage[Width"] == SMALL).all() and (table["Height]"] == SMALL).all()
    assert table["OriginalImagePixelSpacing[x"].between(400 / SMALL * 0.9, 430 / SMALL * 1.1).all()
    boxes = pd.read_csv(small_set / layout.BBOX)
    assert list(boxes.columns[:3]) == ["Image Index", "Finding Label", "Bbox [x"]
    xywh = boxes.iloc[:, 2:6].to_numpy(dtype=float)
    assert (xywh[:, :2] >= 0).all() and (xywh[:, 2:] > 0).all()
    assert (xywh[:, 0] + xywh[:, 2] <= SMALL + 1e-6).all() and (xywh[:, 1] + xywh[:, 3] <= SMALL + 1e-6).all()
    # one box per positive finding per image (Infiltration spelled 'Infiltrate', as NIH does)
    labels = table.set_index("Image Index")["Finding Labels"]
    positives = sum(0 if s == "No Finding" else len(s.split("|")) for s in labels)
    assert len(boxes) == positives
    names = boxes["Finding Label"].replace("Infiltrate", "Infiltration")
    assert all(n in labels[i].split("|") for i, n in zip(boxes["Image Index"], names))
    marker = json.loads((small_set / layout.MARKER).read_text())
    assert marker["box_frame"] == SMALL and marker["state"] == "complete" and marker["synthetic"] is True
    assert "SYNTHETIC" in (small_set / layout.README).read_text()


def test_masks_exist_for_every_image(small_set):
    names = sorted(p.name for p in (small_set / "images").iterdir())
    assert names == sorted(p.name for p in (small_set / "masks").iterdir()) and len(names) == 40
    for name in names[:10]:
        mask = cv2.imread(str(small_set / "masks" / name), cv2.IMREAD_UNCHANGED)
        assert mask.shape == (SMALL, SMALL) and set(np.unique(mask)) <= {0, 255}
        assert 0.12 < (mask > 0).mean() < 0.6  # two lung fields, not empty, not the whole film


def test_nih_reader_reads_the_phantom(small_set):
    from cxrkit.data.datasets.nih import NIHDataset

    ds = NIHDataset(small_set)
    assert ds.source == "phantom" and len(ds) == 40
    raw = pd.read_csv(small_set / layout.BBOX)
    assert len(ds.boxes) == len(raw) and "Infiltrate" not in set(ds.boxes["label"])
    row = raw.iloc[0]
    sample = ds[int(np.flatnonzero(ds.table["image_id"] == row["Image Index"])[0])]
    box = sample["meta"]["boxes"][0]
    assert box["x"] == pytest.approx(row.iloc[2]) and box["w"] == pytest.approx(row.iloc[4])  # frame = film


# -- the signs ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("finding", NIH_FINDINGS)
def test_each_sign_changes_pixels_inside_its_box(finding):
    size = 96
    for spec in sample_population(30, seed=3)[::10]:
        with_f, without = render_with_without(spec.with_findings([]), finding, size)
        assert finding in with_f.boxes and not without.boxes
        x, y, w, h = with_f.boxes[finding]
        assert 0 <= x and 0 <= y and w >= 1 and h >= 1 and x + w <= size and y + h <= size
        diff = np.abs(with_f.image.astype(np.float32) - without.image)
        inside = np.zeros(diff.shape, bool)
        inside[int(y): int(np.ceil(y + h)), int(x): int(np.ceil(x + w))] = True
        assert diff[inside].mean() > 2.0, f"{finding} barely changes its box"
        assert diff[inside].mean() > 5 * diff[~inside].mean(), f"{finding} changes pixels outside its box"


def test_ap_magnifies_the_heart_and_cardiomegaly_exceeds_half_the_chest():
    pa, ap, big = [], [], []
    for spec in sample_population(12, seed=5):
        normal = spec.with_findings([])
        pa.append(render_film(replace(normal, view="PA"), 128).ctr)
        ap.append(render_film(replace(normal, view="AP"), 128).ctr)
        big.append(render_film(replace(spec.with_findings(["Cardiomegaly"]), view="PA"), 128).ctr)
    assert all(a > p for a, p in zip(ap, pa))
    assert max(pa) < 0.5 < min(big)
    assert np.mean(ap) > np.mean(pa) + 0.04


def test_difficulty_controls_contrast_and_noise():
    spec = sample_population(3, seed=2)[0].with_findings([])
    easy = render_with_without(spec, "Nodule", 128, Difficulty.level(0))
    hard = render_with_without(spec, "Nodule", 128, Difficulty.level(1))
    change = [np.abs(w.image.astype(float) - wo.image).max() for w, wo in (easy, hard)]
    assert change[0] > change[1]
    noisy = render_film(spec, 128, Difficulty(noise=0.08)).image.astype(float)
    clean = render_film(spec, 128, Difficulty(noise=0.0)).image.astype(float)
    assert np.abs(noisy - clean).mean() > 2
    assert Difficulty.level(0.5) == Difficulty() == resolve_difficulty(None) == resolve_difficulty("default")
    with pytest.raises(DifficultyError, match="in \\[0, 1\\]"):
        Difficulty.level(1.5)
    with pytest.raises(DifficultyError, match="easy, default"):
        resolve_difficulty("impossible")


# -- population statistics ----------------------------------------------------------------------------------
def test_enrich_zero_follows_the_nih_prevalence():
    stats = load_stats()
    films = sample_population(20000, seed=1, enrich=0.0)
    for f in NIH_FINDINGS:
        got = np.mean([f in s.findings for s in films])
        assert abs(got - stats["prevalence"][f]) < 0.006 + 0.15 * stats["prevalence"][f], f
    assert abs(np.mean([not s.findings for s in films]) - stats["no_finding"]) < 0.02
    assert abs(np.mean([s.view == "AP" for s in films]) - stats["view_ap"]) < 0.03
    assert abs(np.mean([s.sex == "M" for s in films]) - stats["sex_male"]) < 0.03


def test_a_generated_set_with_enrich_zero_looks_like_nih(tmp_path):
    stats = load_stats()
    generate(tmp_path / "real", n=300, size=32, seed=4, enrich=0.0, progress=False)
    table = pd.read_csv(tmp_path / "real" / layout.TABLE)
    labels = table["Finding Labels"]
    assert abs((labels == "No Finding").mean() - stats["no_finding"]) < 0.12
    assert abs(labels.str.contains("Infiltration").mean() - stats["prevalence"]["Infiltration"]) < 0.08
    per_patient = table.groupby("Patient ID").size()
    assert per_patient.max() <= 15 and (per_patient == 1).mean() > 0.3  # many single films, some follow-ups


def test_enrich_lifts_every_finding_to_the_floor():
    sets, real = combo_table(load_stats())
    w = enrich_weights(sets, real, 0.05)
    prevalence = {f: w[[f in s for s in sets]].sum() for f in NIH_FINDINGS}
    assert min(prevalence.values()) >= 0.0499
    assert prevalence["Infiltration"] > prevalence["Hernia"]  # the common stay common


def test_stats_builder_on_a_tiny_table():
    df = pd.DataFrame({
        "Finding Labels": ["No Finding", "Effusion|Cardiomegaly", "Hernia", "No Finding"],
        "Patient ID": [1, 1, 2, 3], "Follow-up #": [0, 1, 0, 0], "Patient Age": [50, 51, 30, 70],
        "Patient Gender": ["M", "M", "F", "F"], "View Position": ["PA", "AP", "PA", "PA"]})
    stats = build_stats(df)
    assert stats["prevalence"]["Cardiomegaly"] == 0.25 and stats["no_finding"] == 0.5
    assert ["Cardiomegaly|Effusion", 1] in stats["combos"]  # canonical NIH order inside a set
    assert stats["images_per_patient"] == [[1, 2], [2, 1]] and stats["view_ap"] == 0.25


def test_shipped_stats_match_the_real_table(full_reference_data):
    table = full_reference_data / "nih-metadata" / "Data_Entry_2017_v2020.csv.gz"
    shipped = load_stats()
    assert build_stats(table) == shipped
    assert len((Path(build.__file__).parent / "stats.json").read_bytes()) < 40_000


# -- errors -------------------------------------------------------------------------------------------------
def test_bad_requests_fail_clearly(tmp_path, small_set):
    with pytest.raises(PhantomError, match="at least 1 image"):
        generate(tmp_path / "a", n=0)
    with pytest.raises(CxrError, match="size=-8"):
        generate(tmp_path / "b", n=5, size=-8)
    with pytest.raises(PhantomError, match="seed"):
        generate(tmp_path / "c", n=5, seed=-1)
    with pytest.raises(CxrError, match="at least 1 image"):
        sample_population(-3)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(PhantomError, match="not empty"):
        generate(busy, n=5, size=SMALL, progress=False)
    with pytest.raises(PhantomError, match="other settings"):
        generate(small_set, n=41, size=SMALL, seed=7, progress=False)
