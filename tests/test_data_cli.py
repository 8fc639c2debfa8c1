"""CLI smoke tests of the data stage: cxr phantom / prepare / data summary / bench prepare / bench loader."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from cxrkit.cli import build_app
from cxrkit.data.errors import CacheError

runner = CliRunner()


def data_app() -> typer.Typer:
    """A `cxr` holding only this stage's commands (the root app also needs every other stage's CLI)."""
    return build_app(stages=("cxrkit.data.cli",))


def make_nih(root: Path, n: int = 16) -> Path:
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    lines = ["Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
             "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"]
    for i in range(n):
        name = f"{i:08d}_000.png"
        cv2.imwrite(str(root / "images" / name), rng.integers(0, 256, (40, 32), dtype=np.uint8))
        lines.append(f"{name},{'Mass' if i % 4 == 0 else 'No Finding'},0,{i // 2},{20 + 3 * i},{'MF'[i % 2]},"
                     f"{'PA' if i % 3 else 'AP'},32,40,0.2,0.2")
    (root / "Data_Entry_2017.csv").write_text("\n".join(lines) + "\n")
    return root


def invoke(args: list[str]):
    result = runner.invoke(data_app(), [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == 0, result.output
    return result


def test_prepare_summary_and_loader_bench(tmp_path):
    src = make_nih(tmp_path / "nih")
    out = tmp_path / "cache"
    r = invoke(["prepare", src, out, "--size", "24", "--workers", "1", "--quiet"])
    assert "16 images of 24 px" in r.output
    r = invoke(["data", "summary", out, "--out", tmp_path / "summary"])
    assert "Mass" in r.output and "train" in r.output
    summary = json.loads((tmp_path / "summary" / "summary.json").read_text())
    assert summary["splits"]["all"]["positives"]["Mass"] == 4 and summary["splits"]["all"]["images"] == 16
    assert sum(summary["splits"][s]["images"] for s in ("train", "val", "test")) == 16
    assert summary["splits"]["all"]["sex"] == {"F": 8, "M": 8}
    assert sum(summary["splits"]["all"]["age"]["counts"]) == 16
    assert (tmp_path / "summary" / "summary.png").stat().st_size > 10_000
    r = invoke(["bench", "loader", out, "--batch-size", "4", "--epochs", "1"])
    result = json.loads(r.output.strip().splitlines()[-1])
    assert result["images"] == 16 and result["img_s"] > 0


def test_prepare_refuses_another_cache(tmp_path):
    src = make_nih(tmp_path / "nih")
    invoke(["prepare", src, tmp_path / "cache", "--size", "24", "--workers", "1", "--quiet"])
    with pytest.raises(CacheError, match="--overwrite"):
        invoke(["prepare", src, tmp_path / "cache", "--size", "32", "--workers", "1", "--quiet"])
    invoke(["prepare", src, tmp_path / "cache", "--size", "32", "--workers", "1", "--quiet", "--overwrite"])


def test_bench_prepare(tmp_path):
    src = make_nih(tmp_path / "nih")
    r = invoke(["bench", "prepare", src, "--size", "16", "--workers", "1"])
    result = json.loads(r.output.strip().splitlines()[-1])
    assert result["images"] == result["cached"] == 16 and result["ratio"] > 0


def test_phantom_then_prepare(tmp_path):
    invoke(["phantom", tmp_path / "ph", "--n", "12", "--size", "64", "--seed", "1"])
    r = invoke(["prepare", tmp_path / "ph", tmp_path / "cache", "--size", "32", "--workers", "1", "--quiet"])
    assert "12 images of 32 px" in r.output
    from cxrkit.data.cache import open_cache

    import pandas as pd

    cache = open_cache(tmp_path / "cache")
    assert cache.manifest["source"]["name"] == "phantom"
    # phantom boxes are stated in the phantom's own 64-px frame: halved in a 32-px cache
    listed = pd.read_csv(tmp_path / "ph" / "BBox_List_2017.csv").iloc[:, :6]
    listed.columns = ["image_id", "label", "x", "y", "w", "h"]
    assert len(cache.boxes) == len(listed) > 0
    got = cache.boxes.sort_values(["image_id", "x"]).reset_index(drop=True)
    want = listed.sort_values(["image_id", "x"]).reset_index(drop=True)
    assert list(got["image_id"]) == list(want["image_id"])
    assert np.allclose(got[["x", "y", "w", "h"]].to_numpy(), want[["x", "y", "w", "h"]].to_numpy() / 2)


def test_root_cli_wires_the_data_commands(tmp_path, capsys):
    from cxrkit import cli

    try:
        app = cli.build_app()
    except ModuleNotFoundError as exc:
        pytest.skip(f"root CLI not assembled yet: {exc}")
    r = runner.invoke(app, ["--help"])
    assert "prepare" in r.output and "phantom" in r.output
    src = make_nih(tmp_path / "nih")
    cli.main(["prepare", str(src), str(tmp_path / "c"), "--size", "24", "--workers", "1", "--quiet"])
    with pytest.raises(SystemExit) as exit_:
        cli.main(["prepare", str(src), str(tmp_path / "c"), "--size", "32", "--workers", "1", "--quiet"])
    assert exit_.value.code == 2 and "--overwrite" in capsys.readouterr().err
