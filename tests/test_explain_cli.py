"""`cxr explain` end to end on a real NIH PNG and a real JPEG-compressed DICOM, with a small random bundle."""
from __future__ import annotations

import json

import cv2
import pytest
import torch
import typer
from typer.testing import CliRunner

from cxrkit import RESEARCH_NOTICE
from cxrkit.data.labels import NIH_FINDINGS
from cxrkit.explain import ExplainError
from cxrkit.explain.cli import register


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, make_tiny_bundle):
    return make_tiny_bundle(tmp_path_factory.mktemp("bundle") / "b")


@pytest.fixture(scope="module")
def app():
    app = typer.Typer()

    @app.callback()
    def _root() -> None:  # keeps `explain` a sub-command, as in the real `cxr`
        pass

    register(app, {})
    return app


@pytest.fixture()
def inputs(shared_data, tmp_path):
    png = shared_data / "nih-sample" / "images" / "00000075_000.png"
    dcm = shared_data / "dicom" / "cr_monochrome2_jpeg_baseline.dcm"
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)  # a PNG signature and nothing decodable
    return png, dcm, bad


def run(app, *args):
    torch.set_num_threads(1)
    return CliRunner().invoke(app, ["explain", *map(str, args)])


def test_cli_explains_png_and_dicom_and_reports_bad_files(app, bundle, inputs, tmp_path):
    png, dcm, bad = inputs
    out = tmp_path / "out"
    res = run(app, bundle, png, dcm, bad, "--out", out, "--top-k", "2")
    assert res.exit_code == 0, res.output
    assert RESEARCH_NOTICE in res.output and "skipped 1" in res.output
    results = json.loads((out / "explanations.json").read_text())
    assert results["notice"] == RESEARCH_NOTICE and results["request"]["concrete_method"] == "cam"
    ok = [r for r in results["images"] if "error" not in r]
    failed = [r for r in results["images"] if "error" in r]
    assert len(ok) == 2 and len(failed) == 1 and "broken.png" in failed[0]["image"]
    for rec, stem, side in ((ok[0], "00000075_000", 256), (ok[1], "cr_monochrome2_jpeg_baseline", 1024)):
        assert (rec["height"], rec["width"]) == (side, side)
        assert set(rec["probabilities"]) == set(NIH_FINDINGS)
        top2 = sorted(rec["probabilities"], key=rec["probabilities"].get, reverse=True)[:2]
        assert list(rec["findings"]) == top2
        for name, f in rec["findings"].items():
            assert f["prob"] == pytest.approx(rec["probabilities"][name])
            fig = cv2.imread(str(out / f["png"]))
            assert f["png"] == f"{stem}/{name}.png" and fig.shape[1] == side and fig.shape[0] > side
            for b in f["boxes"]:  # boxes are in the original image's pixels
                assert 0 <= b["x"] and b["x"] + b["w"] <= side and 0 <= b["y"] and b["y"] + b["h"] <= side
                assert 0 < b["score"] <= 1
        assert (out / stem / "explanation.json").is_file()
    page = (out / "index.html").read_text()
    for rec in ok:
        for f in rec["findings"].values():
            assert f'src="{f["png"]}"' in page
    assert "broken.png" in page and "Research use only" in page


def test_cli_named_findings_method_and_resume(app, bundle, inputs, tmp_path):
    png, _, _ = inputs
    out = tmp_path / "out"
    args = (bundle, png, "--out", out, "--findings", "Effusion,Mass", "--method", "gradcam")
    assert run(app, *args).exit_code == 0
    figs = sorted(p.name for p in (out / "00000075_000").glob("*.png"))
    assert figs == ["Effusion.png", "Mass.png"]
    first = (out / "00000075_000" / "Mass.png").stat().st_mtime_ns
    assert run(app, *args).exit_code == 0  # same request: the finished image is reused
    assert (out / "00000075_000" / "Mass.png").stat().st_mtime_ns == first
    assert run(app, *args[:-1], "gradcam++").exit_code == 0  # another method: explained again
    assert (out / "00000075_000" / "Mass.png").stat().st_mtime_ns != first
    assert json.loads((out / "explanations.json").read_text())["request"]["method"] == "gradcam++"


def test_cli_user_errors(app, bundle, inputs, tmp_path):
    png, _, bad = inputs
    res = run(app, bundle, png, "--out", tmp_path / "o", "--findings", "Fracture")
    assert isinstance(res.exception, ExplainError) and "unknown finding" in str(res.exception)
    res = run(app, bundle, png, "--out", tmp_path / "o", "--findings", "Mass", "--top-k", "2")
    assert isinstance(res.exception, ExplainError)
    res = run(app, bundle, png, "--out", tmp_path / "o", "--method", "attention")
    assert isinstance(res.exception, ExplainError) and "attention-head" in str(res.exception)
    res = run(app, bundle, png, "--out", tmp_path / "o", "--box-threshold", "2")
    assert isinstance(res.exception, ExplainError)
    res = run(app, bundle, bad, "--out", tmp_path / "o2")
    assert isinstance(res.exception, ExplainError) and "no image could be explained" in str(res.exception)


def test_real_cxr_entry_point_reports_user_errors_in_one_line(bundle, inputs, tmp_path, capsys):
    from cxrkit.cli import main

    png, _, _ = inputs
    with pytest.raises(SystemExit) as exit_info:
        main(["explain", str(bundle), str(png), "--out", str(tmp_path / "o"), "--findings", "Fracture"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "unknown finding" in err and "Traceback" not in err
