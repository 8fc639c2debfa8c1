"""Batch prediction: inputs, rows, error rows, outputs, heatmaps, resume and 2-process torchrun sharding."""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from cxrkit import RESEARCH_NOTICE
from cxrkit.bundle import load_bundle
from cxrkit.data.labels import NIH_FINDINGS
from cxrkit.deploy.predict import PredictError, expand_inputs, predict_files, read_journal, run_shard, write_results

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, make_tiny_bundle) -> Path:
    return make_tiny_bundle(tmp_path_factory.mktemp("bundle"))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, shared_data) -> Path:
    """3 real NIH films, the real chest CR and abdomen DICOMs, a non-image and a truncated PNG."""
    d = tmp_path_factory.mktemp("inputs")
    for p in sorted((shared_data / "nih-sample" / "images").glob("*.png"))[:3]:
        shutil.copy(p, d / p.name)
    sub = d / "dicom"
    sub.mkdir()
    shutil.copy(shared_data / "dicom" / "cr_monochrome2_jpeg_baseline.dcm", sub / "chest.dcm")
    shutil.copy(shared_data / "dicom" / "not_chest_abdomen_ot.dcm", sub / "abdomen.dcm")
    (d / "notes.png").write_bytes(b"this is not an image")
    (d / "trunc.png").write_bytes((shared_data / "nih-sample" / "images" / "00000075_000.png").read_bytes()[:400])
    (d / ".hidden.png").write_bytes(b"skip me")
    return d


def test_expand_inputs_folders_globs_and_missing(inputs):
    found = expand_inputs([inputs])
    names = [p.name for p in found]
    assert ".hidden.png" not in names and "chest.dcm" in names and "abdomen.dcm" in names
    assert len(found) == 7
    globbed = expand_inputs([str(inputs / "*.png")])
    assert {p.name for p in globbed} == {p.name for p in found if p.suffix == ".png"}
    # names that match nothing stay, so they become error rows instead of silently disappearing
    assert expand_inputs([str(inputs / "nothing*.png"), "missing.dcm"]) == [inputs / "nothing*.png",
                                                                             Path("missing.dcm")]


def test_rows_one_per_input_in_order_with_errors(bundle, inputs):
    pred = load_bundle(bundle)
    paths = expand_inputs([inputs]) + [inputs / "missing.png"]
    rows = predict_files(pred, paths, batch_size=2, workers=2)
    assert [r["path"] for r in rows] == [str(p) for p in paths]
    assert [r["index"] for r in rows] == list(range(len(paths)))
    by_name = {Path(r["path"]).name: r for r in rows}
    assert by_name["notes.png"]["status"] == "error" and "not an accepted image format" in by_name["notes.png"]["error"]
    assert by_name["trunc.png"]["status"] == "error" and "truncated" in by_name["trunc.png"]["error"]
    assert by_name["missing.png"]["status"] == "error" and "not found" in by_name["missing.png"]["error"]
    abdomen = by_name["abdomen.dcm"]
    assert abdomen["status"] == "ok" and abdomen["header_ok"] is False and abdomen["quality_ok"] is False
    assert abdomen["modality"] == "OT" and "modality OT" in abdomen["quality_reason"]
    chest = by_name["chest.dcm"]
    assert chest["header_ok"] is True and (chest["modality"], chest["body_part"], chest["view"]) == ("CR", "CHEST", "PA")
    # probabilities are exactly the predictor's on the same decoded images; findings use the bundle's thresholds
    from cxrkit.data.decode import read_image

    good = [r for r in rows if r["status"] == "ok"]
    probs = pred.predict([read_image(r["path"]) for r in good])
    got = np.array([[r["probs"][n] for n in NIH_FINDINGS] for r in good])
    np.testing.assert_allclose(got, probs, atol=1e-6)
    for r, p in zip(good, probs):
        assert r["findings"] == [n for n, v in zip(NIH_FINDINGS, p) if v >= 0.5]
        assert r["abnormality"] == pytest.approx(float(p.max()), abs=1e-6)


def test_csv_and_jsonl_carry_the_notice(bundle, inputs, tmp_path):
    pred = load_bundle(bundle)
    rows = predict_files(pred, expand_inputs([inputs]), batch_size=4)
    out_csv = write_results(rows, tmp_path / "r.csv", pred.label_names)
    lines = out_csv.read_text().splitlines()
    assert lines[0] == f"# {RESEARCH_NOTICE}"
    table = list(csv.DictReader(lines[1:]))
    assert len(table) == len(rows) and set(NIH_FINDINGS) <= set(table[0])
    assert {"quality_ok", "quality_reason", "modality", "error"} <= set(table[0])
    out_jsonl = write_results(rows, tmp_path / "r.jsonl", pred.label_names)
    objs = [json.loads(x) for x in out_jsonl.read_text().splitlines()]
    assert len(objs) == len(rows) and all(o["notice"] == RESEARCH_NOTICE for o in objs)
    with pytest.raises(PredictError, match=r"\.csv or \.jsonl"):
        write_results(rows, tmp_path / "r.txt", pred.label_names)


def test_heatmaps_written_for_positive_findings(bundle, inputs, tmp_path):
    pred = load_bundle(bundle)
    path = sorted(inputs.glob("0*.png"))[0]
    row = predict_files(pred, [path], heatmaps=tmp_path / "hm")[0]
    expected = row["findings"] or [max(row["probs"], key=row["probs"].get)]
    assert [Path(h).name for h in row["heatmaps"]] == [f"000000_{path.stem}_{n}.png" for n in expected]
    assert all(Path(h).stat().st_size > 0 for h in row["heatmaps"])


def test_run_shard_resumes_from_its_journal(bundle, inputs, tmp_path):
    pred = load_bundle(bundle)
    paths = sorted(inputs.glob("0*.png"))
    out = tmp_path / "r.jsonl"
    journal = tmp_path / "r.jsonl.part0of1.jsonl"
    # a previous, interrupted run finished input 0 (marked so we can tell it was not recomputed)
    journal.write_text(json.dumps({"index": 0, "path": str(paths[0]), "status": "ok", "error": "", "marker": 1})
                       + "\n" + '{"index": 1, "pa')  # torn last line from the interruption
    assert list(read_journal(journal)) == [0]
    run_shard(pred, paths, out, batch_size=2, progress=False)
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["index"] for r in rows] == [0, 1, 2] and rows[0].get("marker") == 1 and "marker" not in rows[1]
    assert not journal.exists()


@pytest.mark.slow
def test_torchrun_two_process_gloo_matches_single_process(bundle, inputs, tmp_path):
    script = tmp_path / "cxr_deploy.py"
    script.write_text(textwrap.dedent("""
        import sys, torch
        torch.set_num_threads(1)
        from cxrkit.cli import build_app
        build_app(stages=("cxrkit.deploy.cli",))(args=sys.argv[1:])
    """))
    out = tmp_path / "dist.jsonl"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29653",
           str(script), "predict", str(bundle), str(inputs), "--out", str(out), "--batch-size", "2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    # exit 1 (EXIT_SOME_FAILED): the inputs hold a non-image and a truncated PNG
    assert proc.returncode == 1 and "2 input(s) failed" in proc.stdout, proc.stderr[-3000:]
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    paths = expand_inputs([inputs])
    assert [r["path"] for r in rows] == [str(p) for p in paths]
    single = predict_files(load_bundle(bundle), paths)
    for a, b in zip(rows, single):
        assert a["status"] == b["status"]
        if a["status"] == "ok":
            assert a["probs"] == pytest.approx(b["probs"], abs=1e-5)
    assert not list(tmp_path.glob("dist.jsonl.part*"))


def _in_daemon_thread(fn, timeout_s: float):
    """Run fn in a daemon thread (a hang cannot keep pytest alive); returns its result or fails after timeout_s."""
    import threading

    box = {}
    thread = threading.Thread(target=lambda: box.update(result=fn()), daemon=True)
    thread.start()
    thread.join(timeout_s)
    assert not thread.is_alive(), f"still running after {timeout_s} s (hung)"
    return box["result"]


def test_dangling_symlink_and_fifo_become_error_rows_without_hanging(bundle, inputs, tmp_path):
    folder = tmp_path / "films"
    folder.mkdir()
    shutil.copy(next(inputs.glob("0*.png")), folder / "good.png")
    (folder / "gone.png").symlink_to(tmp_path / "deleted.png")
    os.mkfifo(folder / "pipe.dcm")
    named_fifo = tmp_path / "named.png"
    os.mkfifo(named_fifo)
    paths = expand_inputs([folder, named_fifo])
    assert sorted(p.name for p in paths) == ["gone.png", "good.png", "named.png", "pipe.dcm"]
    pred = load_bundle(bundle)
    rows = _in_daemon_thread(lambda: predict_files(pred, paths, batch_size=2), 60)
    by_name = {Path(r["path"]).name: r for r in rows}
    assert by_name["good.png"]["status"] == "ok"
    assert "broken symbolic link" in by_name["gone.png"]["error"]
    for fifo in ("pipe.dcm", "named.png"):
        assert by_name[fifo]["status"] == "error" and "FIFO" in by_name[fifo]["error"], by_name[fifo]


def test_cxr_predict_exit_status_says_whether_inputs_failed(bundle, inputs, tmp_path):
    from typer.testing import CliRunner

    from cxrkit.cli import build_app

    good = str(next(inputs.glob("0*.png")))
    bad = str(inputs / "notes.png")
    app = build_app()
    codes = {}
    for name, files in {"all_ok": [good], "some_failed": [good, bad], "all_failed": [bad, str(tmp_path / "no.png")]}.items():
        out = tmp_path / f"{name}.csv"
        res = CliRunner().invoke(app, ["predict", str(bundle), *files, "--out", str(out)])
        assert out.is_file(), res.output
        codes[name] = res.exit_code
    assert codes == {"all_ok": 0, "some_failed": 1, "all_failed": 3}


def test_the_cxr_command_itself_exits_with_those_codes(bundle, inputs, tmp_path):
    """Through `python -m cxrkit.cli` (cxrkit.cli.main), not only the Typer app: main must pass the code on."""
    good, bad = str(next(inputs.glob("0*.png"))), str(inputs / "notes.png")
    codes = []
    for files in ([good, bad], [bad]):
        proc = subprocess.run([sys.executable, "-m", "cxrkit.cli", "predict", str(bundle), *files, "--out",
                               str(tmp_path / f"r{len(files)}.csv")], capture_output=True, text=True, timeout=240)
        codes.append(proc.returncode)
    assert codes == [1, 3]


def test_boxes_in_csv_and_jsonl_follow_the_bundles_tuned_parameters(bundle, inputs, tmp_path):
    from cxrkit.bundle import read_bundle_config, write_bundle_config
    from cxrkit.data.decode import read_image
    from cxrkit.explain import boxes_for, explain_images

    tuned = tmp_path / "bundle"
    shutil.copytree(bundle, tuned)
    cfg = read_bundle_config(tuned)
    # Effusion always positive, with tuned boxes (one, at 0.3 x peak); Mass always positive, defaults
    cfg["thresholds"] = {n: (0.0 if n in ("Effusion", "Mass") else 1.01) for n in cfg["label_names"]}
    cfg["explain"] = {"boxes": {"cam": {"Effusion": {"threshold": 0.3, "min_area_frac": 0.0, "max_boxes": 1}}}}
    write_bundle_config(tuned, cfg)
    pred = load_bundle(tuned)
    path = sorted(inputs.glob("0*.png"))[0]
    rows = predict_files(pred, [path, inputs / "notes.png"])
    row = rows[0]
    assert row["box_method"] == "cam" and set(row["boxes"]) == {"Effusion", "Mass"}
    maps = explain_images(pred, [read_image(path)], ["Effusion", "Mass"])[0]
    for name in ("Effusion", "Mass"):
        assert row["boxes"][name] == [list(b) for b in boxes_for(pred, name, maps[name], "cam")]
    assert len(row["boxes"]["Effusion"]) == 1  # the tuned max_boxes
    for x, y, w, h, score in row["boxes"]["Mass"]:
        assert 0 <= x and 0 <= y and w > 0 and h > 0 and x + w <= row["width"] and 0 < score <= 1
    assert "boxes" not in rows[1]  # an error row has no boxes
    write_results(rows, tmp_path / "r.csv", pred.label_names)
    write_results(rows, tmp_path / "r.jsonl", pred.label_names)
    with open(tmp_path / "r.csv", newline="") as fh:
        got = list(csv.DictReader(line for line in fh if not line.startswith("#")))
    assert json.loads(got[0]["boxes"]) == row["boxes"] and got[0]["box_method"] == "cam"
    assert got[1]["boxes"] == ""
    assert json.loads((tmp_path / "r.jsonl").read_text().splitlines()[0])["boxes"] == row["boxes"]
    skipped = predict_files(pred, [path], boxes=False)[0]
    assert "boxes" not in skipped and "box_method" not in skipped and skipped["probs"] == row["probs"]
