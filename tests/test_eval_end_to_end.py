"""`evaluate` end to end on a tiny cache of the real NIH sample with tiny random bundles."""
from __future__ import annotations

import json
import re
import shutil
import sys
from html.parser import HTMLParser

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from cxrkit.bundle import save_bundle
from cxrkit.bundle.calibration import apply_calibration
from cxrkit.data.labels import NIH_FINDINGS
from cxrkit.evaluation.evaluate import EvaluationError, evaluate
from cxrkit.evaluation.report.html import PHANTOM_WARNING, render_report
from cxrkit.models import create_model
from nih_like import nih_like

ADJ = "nih-metadata/google2019_nih-chest-xray-labels.csv.gz"


@pytest.fixture(scope="module")
def setup(tmp_path_factory, shared_data):
    from cxrkit.data import prepare

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("e2e")
    # with the NIH boxes: 2 of the sample's 6 boxed images fall in the test split (localisation is exercised)
    boxes, adjudicated = shared_data / "nih-metadata" / "BBox_List_2017.csv.gz", shared_data / ADJ
    # the real 421-film sample, or the committed subset topped up with variants (boxes and labels follow)
    src = nih_like(shared_data, root / "nih", 160, tables=(boxes, adjudicated))
    if src != shared_data / "nih-sample":
        boxes, adjudicated = src / "BBox_List_2017.csv", src / adjudicated.name.removesuffix(".gz")
    cache = prepare(src, root / "cache", size=48, workers=1, progress=False, bbox_csv=boxes)
    torch.manual_seed(0)
    b0 = save_bundle(root / "b0", create_model("resnet10t", 14), label_names=NIH_FINDINGS, input_size=48,
                     preresize=48, mean=0.449, std=0.226)
    torch.manual_seed(1)
    b1 = save_bundle(root / "b1", create_model("resnet10t", 14, normal_head=True), label_names=NIH_FINDINGS,
                     input_size=48, preresize=48, mean=0.449, std=0.226)
    return root, cache, b0, b1, adjudicated


class _Tags(HTMLParser):
    VOID = {"meta", "img", "br", "hr", "link", "input"}

    def __init__(self):
        super().__init__()
        self.stack, self.errors, self.srcs = [], [], []

    def handle_starttag(self, tag, attrs):
        self.srcs += [v for k, v in attrs if k in ("src", "href")]
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack.pop() != tag:
            self.errors.append(tag)


def test_evaluate_writes_metrics_and_report(setup, shared_data):
    root, cache, b0, b1, adjudicated = setup
    bundle = shutil.copytree(b0, root / "b0_cal")
    out = root / "eval"
    m = evaluate(bundle, cache.path, "test", out, n_boot=100, seed=0, calibrate="temperature", compare=b1,
                 adjudicated=adjudicated, progress=False, gallery_k=1)
    disk = json.loads((out / "metrics.json").read_text())
    assert disk["mean_auroc"] == pytest.approx(m["mean_auroc"])
    assert set(disk["per_class"]) == set(NIH_FINDINGS)
    # the numbers equal scikit-learn's on the stored (calibrated) predictions
    cfg = json.loads((bundle / "config.json").read_text())
    assert cfg["calibration"]["method"] == "temperature" and len(cfg["calibration"]["temperature"]) == 14
    with np.load(out / "predictions" / "test.npz") as z:
        P = apply_calibration(z["logits"], cfg["calibration"])
    Y = cache.labels(cache.rows("test"))
    for c, name in enumerate(NIH_FINDINGS):
        e = disk["per_class"][name]
        if e["auroc"] is None:
            assert e["reason"] and e["n_pos"] == 0 or e["n_neg"] == 0
            continue
        assert e["auroc"] == pytest.approx(roc_auc_score(Y[:, c], P[:, c]), abs=1e-6)
        assert e["auroc_ci_low"] <= e["auroc"] <= e["auroc_ci_high"]
        assert set(e["operating_points"]) == {"youden", "sens_at_spec90", "sens_at_spec95", "f1"}
    assert disk["mean_auroc_ci_low"] <= disk["mean_auroc"] <= disk["mean_auroc_ci_high"]
    assert set(disk["subgroups"]["dimensions"]) == {"sex", "age", "view", "source"}
    assert set(disk["subgroups"]["dimensions"]["sex"]) == {"F", "M"}
    assert "underdiagnosis" in disk["subgroups"]["dimensions"]["sex"]["M"]
    assert disk["triage"]["abnormality"]["auroc"] is not None and disk["triage"]["simulation"]["n_cases"] > 0
    assert disk["comparison"]["mean_auroc"]["diff"] is not None
    assert disk["adjudicated"]["not_covered"] == {"Fracture": "no NIH output describes it"}
    assert all(not s["comparable"] for s in disk["published"]["studies"].values())
    assert {"Nodule", "Pneumonia"} <= set(disk["localisation"]), disk["localisation"]
    assert disk["calibration"]["method"] == "temperature" and disk["calibration"]["mean_ece"] is not None
    html = (out / "report.html").read_text()
    assert html.startswith("<!DOCTYPE html>") and "Research use only" in html
    assert disk["command"] in html.replace("&#x27;", "'") or "cxr evaluate" in html
    parser = _Tags()
    parser.feed(html)
    assert parser.errors == [] and parser.stack == []
    assert all(s.startswith("data:image/png;base64,") for s in parser.srcs)  # self-contained: no external files
    assert not re.search(r"<script|<link|https?://[^\s\"<]*\.(js|css)", html)
    assert "ROC curves" in html and "Model card" in html and "CheXNet" in html
    assert ("heatmaps unavailable" in html) != (disk["heatmaps"] == "available")

    # a second run resumes: predictions are reused, numbers are identical
    stamp = (out / "predictions" / "test.npz").stat().st_mtime_ns
    again = evaluate(bundle, cache.path, "test", out, n_boot=100, seed=0, progress=False, heatmaps=False)
    assert (out / "predictions" / "test.npz").stat().st_mtime_ns == stamp
    assert again["mean_auroc"] == pytest.approx(m["mean_auroc"])


def test_cli_evaluate_without_explain_says_heatmaps_unavailable(setup, monkeypatch):
    from typer.testing import CliRunner

    from cxrkit.cli import build_app

    root, cache, b0, _, _ = setup
    app = build_app(stages=("cxrkit.evaluation.cli",))
    monkeypatch.setitem(sys.modules, "cxrkit.explain", None)  # import now fails as if the package were absent
    res = CliRunner().invoke(app, ["evaluate", str(b0), str(cache.path), "--out", str(root / "noexp"), "--n-boot",
                                   "10", "--quiet"])
    assert res.exit_code == 0, res.output
    assert "mean AUROC" in res.output and "Research use only" in res.output
    m = json.loads((root / "noexp" / "metrics.json").read_text())
    assert m["heatmaps"].startswith("heatmaps unavailable:")
    assert "heatmaps unavailable:" in (root / "noexp" / "report.html").read_text()


def test_cli_triage_sim_from_bundle_and_cache(setup):
    import typer
    from typer.testing import CliRunner

    from cxrkit.evaluation.cli import register

    root, cache, _, b1, _ = setup
    app, groups = typer.Typer(), {"data": typer.Typer(), "bench": typer.Typer()}
    register(app, groups)
    res = CliRunner().invoke(app, ["triage-sim", "--bundle", str(b1), "--cache", str(cache.path), "--out",
                                   str(root / "tri"), "--hours", "24", "--readers", "1", "--arrival-rate", "10"])
    assert res.exit_code == 0, res.output
    out = json.loads((root / "tri" / "triage.json").read_text())
    assert out["params"]["readers"] == 1 and out["n_cases"] > 100


def test_phantom_evaluation_is_flagged_synthetic(tmp_path):
    from cxrkit.data import prepare
    from cxrkit.data.phantom import generate

    generate(tmp_path / "ph", 60, size=48, seed=0, progress=False)
    cache = prepare(tmp_path / "ph", tmp_path / "phc", size=48, workers=1, progress=False)
    torch.manual_seed(0)
    b = save_bundle(tmp_path / "b", create_model("resnet10t", 14), label_names=NIH_FINDINGS, input_size=48,
                    mean=0.449, std=0.226)
    m = evaluate(b, cache, "test", tmp_path / "out", n_boot=20, progress=False, heatmaps=False)
    assert m["data"]["is_phantom"] is True
    assert all(not s["comparable"] and "phantom" in s["reason"] for s in m["published"]["studies"].values())
    html = (tmp_path / "out" / "report.html").read_text()
    assert PHANTOM_WARNING in html and "synthetic phantoms" in html
    m["data"]["is_phantom"] = False
    assert PHANTOM_WARNING not in render_report(m, {}, "x", m["command"])


def test_bad_requests_are_clear_errors(setup, tmp_path):
    root, cache, b0, _, _ = setup
    other = save_bundle(tmp_path / "ab", create_model("resnet10t", 2), label_names=["a", "b"], input_size=48,
                        mean=0.5, std=0.25)
    with pytest.raises(EvaluationError, match="no labels for"):
        evaluate(other, cache, "test", None, n_boot=5, progress=False)
    with pytest.raises(Exception, match="unknown split"):
        evaluate(b0, cache, "holdout", None, n_boot=5, progress=False)
