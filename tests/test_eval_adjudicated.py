"""Adjudicated labels (Google 2019) on the real NIH sample: mapping, coverage, clear errors."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cxrkit.data.labels import NIH_FINDINGS
from cxrkit.evaluation.adjudicated import AdjudicatedError, adjudicated_metrics, load_adjudicated

TABLE = "nih-metadata/google2019_nih-chest-xray-labels.csv.gz"


@pytest.fixture(scope="module")
def table(shared_data):
    return load_adjudicated(shared_data / TABLE)


@pytest.fixture(scope="module")
def sample(shared_data):
    return pd.read_csv(shared_data / "nih-sample" / "Data_Entry_2017.csv", dtype={"Patient ID": str})


def test_mapping_on_the_real_sample(table, sample):
    ids, pids = sample["Image Index"].to_numpy(), sample["Patient ID"].to_numpy()
    matched = table.set_index("Image Index").reindex(ids)
    probs = np.full((len(ids), 14), 0.1, np.float32)
    col = {n: i for i, n in enumerate(NIH_FINDINGS)}
    # scores that reproduce the adjudicated answer only through the documented mapping
    probs[:, col["Edema"]] = np.nan_to_num(matched["Airspace opacity"].to_numpy(float), nan=0.0) * 0.8 + 0.1
    probs[:, col["Mass"]] = np.nan_to_num(matched["Nodule or mass"].to_numpy(float), nan=0.0) * 0.8 + 0.1
    out = adjudicated_metrics(ids, pids, probs, NIH_FINDINGS, table, n_boot=50, seed=0)
    n_expected = int(np.isin(ids, table["Image Index"]).sum())
    assert out["n_matched_images"] == n_expected > 0
    assert out["per_class"]["Airspace opacity"]["auroc"] == 1.0
    assert out["per_class"]["Airspace opacity"]["n_pos"] >= 1
    assert "Fracture" in out["not_covered"] and "Fracture" not in out["per_class"]
    pt = out["per_class"]["Pneumothorax"]
    if pt["n_pos"] == 0:  # the sample's adjudicated images have no pneumothorax: NaN and a reason, not a crash
        assert pt["auroc"] is None and "no positive" in pt["reason"]


def test_no_overlap_and_bad_tables(table, tmp_path):
    out = adjudicated_metrics(["nope.png"], ["1"], np.zeros((1, 14)), NIH_FINDINGS, table, n_boot=5)
    assert out["n_matched_images"] == 0 and "no image" in out["reason"]
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(AdjudicatedError, match="lacks columns"):
        load_adjudicated(bad)
    with pytest.raises(AdjudicatedError, match="not found"):
        load_adjudicated(tmp_path / "missing.csv")
