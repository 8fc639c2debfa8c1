"""The evaluation stage's commands through Typer (an app holding only this stage, built by cxrkit.cli)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from cxrkit.cli import build_app
from cxrkit.evaluation.triage import TriageError


@pytest.fixture(scope="module")
def app():
    return build_app(stages=("cxrkit.evaluation.cli",))


def test_bench_bootstrap_small(app):
    res = CliRunner().invoke(app, ["bench", "bootstrap", "--n-images", "3000", "--n-boot", "100"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["n_boot"] == 100 and out["mean_auroc_ci"][0] < out["mean_auroc"] < out["mean_auroc_ci"][1]


def test_triage_sim_from_scores(app, tmp_path):
    rng = np.random.default_rng(0)
    ab = rng.random(500) < 0.3
    path = tmp_path / "s.csv"
    path.write_text("score,abnormal\n" + "\n".join(f"{a + rng.normal(0, .3):.4f},{int(a)}" for a in ab))
    res = CliRunner().invoke(app, ["triage-sim", "--scores", str(path), "--hours", "40", "--out", str(tmp_path / "t")])
    assert res.exit_code == 0, res.output
    result = json.loads((tmp_path / "t" / "triage.json").read_text())
    assert result["mean_reduction_pct"] > 0 and (tmp_path / "t" / "triage.png").is_file()
    res = CliRunner().invoke(app, ["triage-sim"])
    assert isinstance(res.exception, TriageError)
