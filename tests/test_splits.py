"""Patient-level stratified splits, official splits, and the leakage check on a 112k-row NIH table: the real one
from the full reference data when present, else one drawn with the phantom's shipped NIH statistics (same size,
same patient structure)."""
from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest

from cxrkit.data.datasets import NIHDataset
from cxrkit.data.errors import DatasetError, LeakageError
from cxrkit.data.labels import NIH_FINDINGS
from cxrkit.data.splits import check_leakage, official_or_patient_split, patient_split

LABELS = list(NIH_FINDINGS)


@pytest.fixture(scope="module")
def nih_table(shared_data, tmp_path_factory):
    full = shared_data / "nih-metadata" / "Data_Entry_2017_v2020.csv.gz"
    table = NIHDataset(shared_data / "nih-sample", table=full, missing="keep").table
    if len(table) >= 100_000:
        return table
    from cxrkit.data.phantom.layout import table_text
    from cxrkit.data.phantom.population import sample_population

    root = tmp_path_factory.mktemp("nih-like")
    (root / "Data_Entry_2017.csv").write_text(table_text(sample_population(112_120, seed=0, enrich=0), 1024))
    return NIHDataset(root, missing="keep").table


def assert_patient_level(table, split):
    per_patient = pd.DataFrame({"p": table["patient_id"], "s": split}).groupby("p")["s"].nunique()
    assert (per_patient == 1).all()


def test_full_nih_split_is_fast_patient_level_and_stratified(nih_table):
    t0 = time.perf_counter()
    split = patient_split(nih_table, LABELS, (0.7, 0.1, 0.2), seed=0)
    elapsed = time.perf_counter() - t0
    assert elapsed < 10, f"patient_split took {elapsed:.1f}s on 112k rows"
    assert split.index.equals(nih_table.index) and set(split) == {"train", "val", "test"}
    assert_patient_level(nih_table, split)
    check_leakage(nih_table.assign(split=split))
    frac = split.value_counts(normalize=True)
    assert frac["train"] == pytest.approx(0.7, abs=0.01) and frac["val"] == pytest.approx(0.1, abs=0.01)
    overall = nih_table[LABELS].mean()
    for name in ("train", "val", "test"):
        prev = nih_table.loc[split == name, LABELS].mean()
        # within 10 % of the overall prevalence (+0.1 percentage point for the rarest findings, e.g. Hernia 0.2 %)
        assert ((prev - overall).abs() <= 0.1 * overall + 0.001).all(), (name, (prev - overall).abs().max())


def test_split_is_deterministic_and_row_order_independent(nih_table):
    sub = nih_table.iloc[:20000]
    a = patient_split(sub, LABELS, seed=7)
    b = patient_split(sub, LABELS, seed=7)
    pd.testing.assert_series_equal(a, b)
    assert not a.equals(patient_split(sub, LABELS, seed=8))
    shuffled = sub.sample(frac=1.0, random_state=0)
    c = patient_split(shuffled, LABELS, seed=7)
    pd.testing.assert_series_equal(c.reindex(a.index), a)


def test_planted_leak_is_caught(nih_table):
    table = nih_table.iloc[:5000].copy()
    table["split"] = patient_split(table, LABELS, seed=0)
    check_leakage(table)
    multi = table["patient_id"].value_counts()
    patient = multi.index[multi > 1][0]
    row = table.index[table["patient_id"] == patient][0]
    table.loc[row, "split"] = "test" if table.loc[row, "split"] != "test" else "train"
    with pytest.raises(LeakageError, match=rf"1 patients appear in more than one split \(e\.g\. {patient}: "):
        check_leakage(table)
    with pytest.raises(DatasetError, match="lacks columns"):
        check_leakage(table.drop(columns="split"))


def test_official_split_kept_and_val_carved_by_patient(nih_table):
    table = nih_table.copy()
    pid = table["patient_id"].astype(int)
    table["official_split"] = np.where(pid % 5 == 0, "test", "train")  # a patient-disjoint "official" split
    split = official_or_patient_split(table, LABELS, (0.7, 0.1, 0.2), seed=0)
    assert (split[table["official_split"] == "test"] == "test").all()
    assert (split[table["official_split"] == "train"] != "test").all()
    assert_patient_level(table, split)
    pool = table["official_split"] == "train"
    assert (split[pool] == "val").mean() == pytest.approx(0.1 / 0.8, abs=0.01)
    leaky = table.copy()
    leaky.loc[leaky.index[(pid == 1).to_numpy()][:1], "official_split"] = "test"  # patient 1 now in both
    with pytest.raises(LeakageError, match="official split"):
        official_or_patient_split(leaky, LABELS)
    no_official = table.assign(official_split=None)
    pd.testing.assert_series_equal(official_or_patient_split(no_official, LABELS, seed=3),
                                   patient_split(no_official, LABELS, seed=3))


def test_nih_official_lists_are_patient_disjoint(shared_data, nih_table):
    lists = [shared_data / "nih-metadata" / n for n in ("train_val_list.txt", "test_list.txt")]
    if not all(p.is_file() for p in lists):
        pytest.skip("NIH train_val_list.txt / test_list.txt are not in the reference data")
    split = pd.Series(None, index=nih_table.index, dtype=object)
    for name, path in zip(("train", "test"), lists):
        split[nih_table["image_id"].isin(set(path.read_text().split()))] = name
    check_leakage(nih_table.assign(split=split))


def test_reader_official_lists_feed_the_split(tmp_path):
    import cv2

    root = tmp_path / "nih"
    (root / "images").mkdir(parents=True)
    lines = ["Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
             "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"]
    names = []
    for p in range(1, 41):
        for k in range(2):
            name = f"{p:08d}_{k:03d}.png"
            names.append((p, name))
            finding = NIH_FINDINGS[p % 14] if p % 3 else "No Finding"
            lines.append(f"{name},{finding},{k},{p},50,M,PA,2048,2048,0.14,0.14")
            cv2.imwrite(str(root / "images" / name), np.zeros((4, 4), np.uint8))
    (root / "Data_Entry_2017.csv").write_text("\n".join(lines) + "\n")
    (root / "test_list.txt").write_text("\n".join(n for p, n in names if p > 32) + "\n")
    (root / "train_val_list.txt").write_text("\n".join(n for p, n in names if p <= 32) + "\n")
    ds = NIHDataset(root)
    split = official_or_patient_split(ds.table, ds.label_names, seed=1)
    assert (split[ds.table["patient_id"].astype(int) > 32] == "test").all()
    assert set(split[ds.table["patient_id"].astype(int) <= 32]) == {"train", "val"}
    assert_patient_level(ds.table, split)


def test_edge_cases_and_bad_arguments():
    table = pd.DataFrame({"patient_id": ["a", "a", "b", "c", "d"], "Mass": [1, 0, np.nan, 1, 0.0]})
    split = patient_split(table, ["Mass"], (0.8, 0.0, 0.2), seed=0)
    assert "val" not in set(split) and split[0] == split[1]
    assert len(patient_split(table.iloc[:0], ["Mass"])) == 0
    for bad in [(0.5, 0.5), (0.7, 0.2, 0.2), (-0.1, 0.6, 0.5), ("a", "b", "c")]:
        with pytest.raises(DatasetError, match="fractions"):
            patient_split(table, ["Mass"], bad)
    with pytest.raises(DatasetError, match=r"lacks columns \['Nodule'\]"):
        patient_split(table, ["Nodule"])
    with pytest.raises(DatasetError, match="no patient_id"):
        patient_split(table.assign(patient_id=[None, "a", "b", "c", "d"]), ["Mass"])
