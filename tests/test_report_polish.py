"""Report details a reader trips over: CI formatting, differences only against comparable studies, a legend for
the heatmap boxes, one research-use sentence, wide tables that scroll, and why an underdiagnosis rate is 0."""
from __future__ import annotations

import numpy as np

from cxrkit import RESEARCH_NOTICE
from cxrkit.data.labels import NIH_FINDINGS
from cxrkit.evaluation.published import published_comparison
from cxrkit.evaluation.report import html


def test_negative_ci_reads_as_a_range():
    text = html.with_ci({"d": -0.05, "d_ci_low": -0.083, "d_ci_high": -0.031}, "d")
    assert text == "-0.050 (-0.083 to -0.031)" and "--" not in text


def test_no_differences_against_non_comparable_studies():
    per_class = {n: {"auroc": 0.9} for n in NIH_FINDINGS}
    pub = published_comparison(per_class, NIH_FINDINGS, data_source="phantom")
    assert not any(s["comparable"] for s in pub["studies"].values())
    assert all(v is None for r in pub["rows"] for k, v in r.items() if k.endswith("_diff"))
    page = html._published(pub)
    assert "difference vs" not in page and "no differences are shown" in page
    real = published_comparison(per_class, NIH_FINDINGS, data_source="nih", split_id="not-a-study-split")
    assert "difference vs" not in html._published(real)


def test_gallery_has_a_legend_and_model_card_one_notice():
    page = html._gallery([{"png_bytes": b"\x89PNG", "finding": "Mass", "kind": "TP", "prob": 0.9}])
    assert "white boxes" in page and "green boxes" in page
    card = html._model_card({"data": {}, "bundle": {}})
    assert card.count("esearch") == RESEARCH_NOTICE.count("esearch") and "Research only." not in card


def test_tables_scroll_inside_the_page():
    t = html.table(["a", "b"], [["1", "2"]])
    assert t.startswith('<div class="tw"><table>') and ".tw{max-width:100%;overflow-x:auto}" in html.CSS


def test_zero_underdiagnosis_is_explained():
    from cxrkit.evaluation.subgroups import underdiagnosis

    class NoBoot:
        n_boot = 0

    Y = np.array([[1, 0], [0, 1], [0, 0], [0, 0]], float)
    S = np.full((4, 2), 0.9)  # every image gets a finding: nothing abnormal is missed, nothing normal is cleared
    ud, _ = underdiagnosis(Y, S, np.array([0.5, 0.5]), NoBoot(), np.arange(4))
    assert ud["underdiagnosis_rate"] == 0 and ud["predicted_no_finding_share"] == 0
    assert ud["normal_predicted_normal_share"] == 0
    page = html._subgroups({"overall_underdiagnosis": ud, "thresholds": "youden", "dimensions": {}})
    assert "The rate is 0 because the model predicts at least one finding on 100.0% of all images" in page
    assert "only 0.0% of the images without any finding were predicted normal" in page
