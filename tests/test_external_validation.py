"""External validation: `cxr prepare --split none / --fractions / --uncertainty`, NIH images in no official list,
and `cxr evaluate --split all` scoring every row of a cache with CIs."""
from __future__ import annotations

import json

import pytest
from test_data_cli import make_nih
from test_datasets import write_chexpert
from typer.testing import CliRunner

from cxrkit.cli import build_app
from cxrkit.data.errors import CxrError

runner = CliRunner()


class Outcome:
    def __init__(self, output: str):
        self.output = output


def invoke(args, stages=("cxrkit.data.cli",), code=0):
    """Run a command; code=2 expects what `cxr` turns into exit 2: a CxrError (one line, no traceback)."""
    result = runner.invoke(build_app(stages=stages), [str(a) for a in args])
    exc = result.exception
    if code == 2 and isinstance(exc, CxrError):
        return Outcome(result.output + str(exc))
    if exc is not None and not isinstance(exc, SystemExit):
        raise exc
    assert result.exit_code == code, result.output
    return result


def prepare(src, out, *extra, code=0):
    return invoke(["prepare", src, out, "--size", "24", "--workers", "1", "--quiet", *extra], code=code)


def test_split_none_puts_every_image_in_test(tmp_path):
    src = make_nih(tmp_path / "nih")
    r = prepare(src, tmp_path / "c", "--split", "none")
    m = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert m["split"]["counts"] == {"train": 0, "val": 0, "test": 16} and m["split"]["policy"] == "none"
    assert "split none" in r.output


def test_fractions_are_used_and_recorded(tmp_path):
    src = make_nih(tmp_path / "nih", n=40)
    prepare(src, tmp_path / "c", "--fractions", "0.8,0.2,0")
    m = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert m["split"]["fractions"] == [0.8, 0.2, 0.0] and m["request"]["fractions"] == [0.8, 0.2, 0.0]
    assert m["split"]["counts"]["test"] == 0 and m["split"]["counts"]["val"] > 0
    r = prepare(src, tmp_path / "c2", "--fractions", "0.8,0.2", code=2)
    assert "three comma-separated" in r.output


def test_nih_images_in_no_official_list_are_counted(tmp_path):
    src = make_nih(tmp_path / "nih", n=20)
    names = [f"{i:08d}_000.png" for i in range(20)]
    # patients are i // 2: keep each patient's two images in one list; images 16-19 are in neither list
    (src / "train_val_list.txt").write_text("\n".join(names[:12]) + "\n")
    (src / "test_list.txt").write_text("\n".join(names[12:16]) + "\n")
    r = prepare(src, tmp_path / "c")
    m = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert m["split"]["policy"] == "official+patient" and m["split"]["n_unlisted"] == 4
    assert m["split"]["counts"]["test"] == 4  # the official test list only
    assert "4 images are in none of the source's official split lists" in r.output
    # --split patient ignores the lists: no unlisted count, and test is carved by patient
    prepare(src, tmp_path / "c2", "--split", "patient")
    m2 = json.loads((tmp_path / "c2" / "manifest.json").read_text())
    assert m2["split"]["policy"] == "patient" and "n_unlisted" not in m2["split"]


def test_chexpert_uncertainty_per_class_is_applied_and_recorded(tmp_path):
    import pandas as pd

    root = write_chexpert(tmp_path, n_patients=4, size=32)
    r = prepare(root, tmp_path / "c", "--format", "chexpert", "--uncertainty", "zeros,Atelectasis=ones,edema=ones")
    m = json.loads((tmp_path / "c" / "manifest.json").read_text())
    pol = m["label_policy"]["uncertainty"]
    assert pol["Atelectasis"] == "ones" and pol["Edema"] == "ones" and pol["Cardiomegaly"] == "zeros"
    assert m["label_policy"]["blank"] == "nan" and "uncertain labels:" in r.output
    # the targets follow the policy: every raw -1 of Atelectasis became 1, of Cardiomegaly 0
    raw = pd.read_csv(root / "train.csv")
    index = pd.read_parquet(tmp_path / "c" / "index.parquet")
    merged = index.merge(raw, left_on="image_id", right_on="Path", suffixes=("", "_raw"))
    assert (merged.loc[merged["Atelectasis_raw"] == -1, "Atelectasis"] == 1).all()
    assert (merged.loc[merged["Cardiomegaly_raw"] == -1, "Cardiomegaly"] == 0).all()
    assert (merged["Atelectasis_raw"] == -1).any() and (merged["Cardiomegaly_raw"] == -1).any()


@pytest.mark.parametrize("value, needle", [("sometimes", "is not a policy"), ("Heart=ones", "unknown observations"),
                                           ("ones,zeros", "at most one bare default")])
def test_bad_uncertainty_is_a_usage_error(tmp_path, value, needle):
    root = write_chexpert(tmp_path, n_patients=2, size=32)
    r = prepare(root, tmp_path / "c", "--uncertainty", value, code=2)
    assert needle in r.output and "Traceback" not in r.output


def test_uncertainty_refused_for_nih(tmp_path):
    r = prepare(make_nih(tmp_path / "nih"), tmp_path / "c", "--uncertainty", "ones", code=2)
    assert "applies to CheXpert" in r.output


def test_evaluate_split_all_scores_every_row(tmp_path, make_tiny_bundle):
    src = make_nih(tmp_path / "nih", n=24)
    prepare(src, tmp_path / "ext", "--split", "none")
    bundle = make_tiny_bundle(tmp_path / "b", size=24)
    out = tmp_path / "eval"
    r = invoke(["evaluate", bundle, tmp_path / "ext", "--split", "all", "--out", out, "--n-boot", "50",
                "--no-heatmaps", "--quiet"], stages=("cxrkit.evaluation.cli",))
    m = json.loads((out / "metrics.json").read_text())
    assert m["data"]["n_images"] == 24 and "24 all images" in r.output
    mass = m["per_class"]["Mass"] if "per_class" in m else m["summary"]["per_class"]["Mass"]
    assert mass["auroc_ci_low"] <= mass["auroc"] <= mass["auroc_ci_high"]
    r = invoke(["evaluate", bundle, tmp_path / "ext", "--split", "all", "--out", tmp_path / "e2", "--calibrate",
                "temperature", "--quiet", "--no-heatmaps"], stages=("cxrkit.evaluation.cli",), code=2)
    assert "--split all scores the validation rows too" in r.output
