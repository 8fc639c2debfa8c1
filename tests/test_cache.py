"""cxr prepare / open_cache: content, bad files, resume after SIGKILL, refusals, leakage, full disk."""
from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from cxrkit.data import cache_work
from cxrkit.data.cache import open_cache, prepare
from cxrkit.data.errors import CacheError, LeakageError
from cxrkit.data.labels import NIH_FINDINGS
from cxrkit.data.transforms import fit_square

NIH_HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
              "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]")
FINDINGS = ("No Finding", "Effusion", "Mass|Nodule", "Atelectasis", "Cardiomegaly|Effusion")


def make_nih(root: Path, n: int = 24, *, shape=(60, 80), seed: int = 0, bad=(), boxes=None) -> Path:
    """An NIH-layout folder: noise PNGs of ``shape``, two images per patient, garbage bytes at indices ``bad``,
    optional BBox_List rows ``boxes`` = [(index, finding, x, y, w, h) in the 1024 frame]."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    lines = [NIH_HEADER]
    h, w = shape
    for i in range(n):
        name = f"{i:08d}_000.png"
        if i in bad:
            (root / "images" / name).write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(rng.integers(0, 256, 300, np.uint8)))
        else:
            cv2.imwrite(str(root / "images" / name), rng.integers(0, 256, (h, w), dtype=np.uint8))
        lines.append(f"{name},{FINDINGS[i % len(FINDINGS)]},0,{i // 2 + 1},{30 + i},{'MF'[i % 2]},PA,{w},{h},"
                     "0.143,0.143")
    (root / "Data_Entry_2017.csv").write_text("\n".join(lines) + "\n")
    if boxes:
        rows = ["Image Index,Finding Label,Bbox [x,y,w,h],,,"]
        rows += [f"{i:08d}_000.png,{f},{x},{y},{bw},{bh}" for i, f, x, y, bw, bh in boxes]
        (root / "BBox_List_2017.csv").write_text("\n".join(rows) + "\n")
    return root


def cache_files(out: Path) -> dict[str, bytes]:
    return {n: (out / n).read_bytes() for n in ("images.npy", "index.parquet", "boxes.parquet", "bad_files.csv")}


def stable_manifest(out: Path) -> dict:
    from cxrkit.data.cache_write import MANIFEST_TIMESTAMPS

    m = json.loads((out / "manifest.json").read_text())
    return {k: v for k, v in m.items() if k not in MANIFEST_TIMESTAMPS}


def test_the_resume_guarantee_names_the_manifest_fields_that_differ(tmp_path):
    """docs/data.md promises byte-identical resumed caches; manifest.json's timestamps are the exception it names."""
    from cxrkit.data.cache_write import MANIFEST_TIMESTAMPS

    src = make_nih(tmp_path / "nih", n=8)
    a = json.loads((prepare(src, tmp_path / "a", size=32, workers=1, progress=False).path / "manifest.json").read_text())
    time.sleep(1.1)  # timestamps have one-second resolution
    b = json.loads((prepare(src, tmp_path / "b", size=32, workers=1, progress=False).path / "manifest.json").read_text())
    differing = {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)}
    assert differing == set(MANIFEST_TIMESTAMPS)
    docs = (Path(__file__).parents[1] / "docs" / "data.md").read_text()
    resume = docs[docs.index("- **Resumable.**"):docs.index("- **No silent overwrite.**")]
    assert "byte-identical" in resume and all(f"`{k}`" in resume for k in MANIFEST_TIMESTAMPS)


def test_prepare_nih_sample(shared_data, tmp_path):
    src = shared_data / "nih-sample"
    cache = prepare(src, tmp_path / "c", size=64, workers=2, progress=False)
    csv = pd.read_csv(src / "Data_Entry_2017.csv")
    n = len(csv)  # 421 films in the full reference data, 20 in the committed subset
    assert len(cache) == n == len(list((src / "images").glob("*.png"))) and cache.manifest["n_bad"] == 0
    assert cache.images.shape == (n, 64, 64) and cache.images.dtype == np.uint8
    assert isinstance(cache.images, np.memmap)
    findings = csv["Finding Labels"].str.split("|").explode().value_counts()
    for name in NIH_FINDINGS:
        assert cache.labels()[:, cache.label_names.index(name)].sum() == findings.get(name, 0), name
    assert (cache.index["image_id"].to_numpy() == csv["Image Index"].to_numpy()).all()
    # rows are aligned: spot-check pixels against the one shared resize
    from cxrkit.data.decode import read_image

    for i in (0, n // 2, n - 1):
        expected, _ = fit_square(read_image(cache.index.at[i, "path"]), 64)
        assert np.array_equal(cache.images[i], expected)
    # spacing at cache size: NIH spacing x original width / cache side (the PNGs span the whole square)
    row = csv.iloc[0]
    assert cache.index.at[0, "spacing_x"] == pytest.approx(row.iloc[9] * row.iloc[7] / 64)
    assert (cache.index[["orig_w", "orig_h"]].to_numpy() == 256).all() and cache.index["ok"].all()
    # every split patient-disjoint, all three present, counts in the manifest
    by_patient = cache.index.groupby("patient_id")["split"].nunique()
    assert (by_patient == 1).all()
    counts = cache.manifest["split"]["counts"]
    assert sum(counts.values()) == n and min(counts.values()) > 0
    assert sorted(np.concatenate([cache.rows(s) for s in ("train", "val", "test")])) == list(range(n))
    m = cache.manifest
    assert m["format"] == "cxrkit-cache" and m["complete"] and m["size"] == 64 and m["n_images"] == n
    assert set(m["versions"]) >= {"cxrkit", "numpy", "opencv", "pydicom"}
    assert m["content_hash"].startswith("sha256:")
    cache.verify()
    assert not (tmp_path / "c" / ".progress").exists()


def test_bad_files_are_listed_and_skipped_and_boxes_follow_the_fit(tmp_path):
    # one finding box per image drawn as a white rectangle in the file: after prepare it must cover the same pixels
    shape = (60, 80)  # non-square: pads top and bottom
    boxes = [(i, "Mass", 256, 128, 384, 512) for i in range(10)]  # 1024 frame -> file x 20, y 7.5, w 30, h 30
    src = make_nih(tmp_path / "nih", n=10, shape=shape, bad=(3, 7), boxes=boxes)
    for i in range(10):
        if i not in (3, 7):
            img = np.zeros(shape, np.uint8)
            img[8:38, 20:50] = 255  # y 7.5..37.5 in the 1024 frame scaled by 60/1024, x 20..50
            cv2.imwrite(str(src / "images" / f"{i:08d}_000.png"), img)
    cache = prepare(src, tmp_path / "c", size=40, workers=2, progress=False, chunk_rows=3)
    assert len(cache) == 8 and cache.manifest["n_bad"] == 2
    assert list(cache.index["image_id"]) == [f"{i:08d}_000.png" for i in range(10) if i not in (3, 7)]
    bad = pd.read_csv(tmp_path / "c" / "bad_files.csv")
    assert sorted(bad["image_id"]) == ["00000003_000.png", "00000007_000.png"]
    assert bad["reason"].str.len().min() > 0 and bad["path"].str.endswith(".png").all()
    assert len(cache.boxes) == 8 and sorted(set(cache.boxes["row"])) == list(range(8))
    for b in cache.boxes.itertuples():
        assert cache.index.at[b.row, "image_id"] == b.image_id
        # fit: scale 40/80 = 0.5, pad_y (40 - 30) / 2 = 5
        assert (b.x, b.y, b.w, b.h) == pytest.approx((10, 7.5 * 0.5 + 5, 15, 15))
        img = cache.images[b.row].astype(int)
        inside = img[int(b.y) + 1:int(b.y + b.h) - 1, int(b.x) + 1:int(b.x + b.w) - 1]
        assert inside.min() > 200 and img.sum() / 255 == pytest.approx(b.w * b.h, rel=0.1)  # and nothing outside
    assert cache.index["spacing_x"].iloc[0] == pytest.approx(0.143 / 0.5)


@pytest.mark.filterwarnings("ignore:End of file reached")  # pydicom, on the truncated file
def test_dicom_folder_with_non_chest_and_broken_files(shared_data, tmp_path):
    src = tmp_path / "dicom"
    src.mkdir()
    for name in ("cr_monochrome2_jpeg_baseline.dcm", "cr_monochrome1_same_pixels.dcm", "not_chest_abdomen_ot.dcm"):
        shutil.copy(shared_data / "dicom" / name, src / name)
    data = (shared_data / "dicom" / "cr_monochrome2_jpeg_baseline.dcm").read_bytes()
    (src / "truncated.dcm").write_bytes(data[: len(data) // 2])  # header fine, pixel data cut
    (src / "garbage.dcm").write_bytes(b"\0" * 128 + b"DICM" + os.urandom(200))
    cache = prepare(src, tmp_path / "c", size=64, workers=1, progress=False)
    bad = pd.read_csv(tmp_path / "c" / "bad_files.csv")
    names = {Path(p).name for p in bad["path"]}
    assert {"not_chest_abdomen_ot.dcm", "truncated.dcm", "garbage.dcm"} <= names
    assert bad["reason"].str.contains("chest").any()
    assert sorted(Path(p).name for p in cache.index["path"]) == ["cr_monochrome1_same_pixels.dcm",
                                                                 "cr_monochrome2_jpeg_baseline.dcm"]
    mono1 = cache.index["path"].str.endswith("monochrome1_same_pixels.dcm").to_numpy()
    a, b = cache.images[np.flatnonzero(mono1)[0]], cache.images[np.flatnonzero(~mono1)[0]]
    assert np.abs(a.astype(int) + b.astype(int) - 255).mean() < 2  # MONOCHROME1 came out inverted
    assert cache.manifest["n_problems"] == len(bad)


def _cxr_command() -> list[str]:
    """The real `cxr` entry point."""
    return [sys.executable, "-m", "cxrkit.cli"]


def test_sigkill_mid_prepare_then_resume_is_byte_identical(tmp_path):
    src = make_nih(tmp_path / "nih", n=40, bad=(13,), boxes=[(5, "Mass", 100, 100, 200, 300)])
    out = tmp_path / "killed"
    env = {**os.environ, cache_work.DELAY_ENV: "0.25"}
    cmd = [*_cxr_command(), "prepare", str(src), str(out), "--size", "32", "--workers", "2", "--chunk-rows", "4",
           "--quiet"]
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while len(list((out / ".progress").glob("chunk_*.json"))) < 3:
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.monotonic() < deadline, "prepare made no progress"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    done = len(list((out / ".progress").glob("chunk_*.json")))
    assert 3 <= done < 10
    with pytest.raises(CacheError, match="resume"):
        open_cache(out)
    resumed = prepare(src, out, size=32, workers=2, progress=False)
    reference = prepare(src, tmp_path / "reference", size=32, workers=1, chunk_rows=4, progress=False)
    assert len(resumed) == 39 and resumed.manifest["n_bad"] == 1
    assert cache_files(out) == cache_files(tmp_path / "reference")
    assert stable_manifest(out)["content_hash"] == stable_manifest(tmp_path / "reference")["content_hash"]
    assert resumed.manifest["request"] == reference.manifest["request"]


def test_resume_from_a_partial_cache_and_refusals(tmp_path):
    a = make_nih(tmp_path / "a", n=12)
    b = make_nih(tmp_path / "b", n=12, seed=1)
    out = tmp_path / "c"
    first = cache_files(prepare(a, out, size=32, workers=1, progress=False).path)
    again = prepare(a, out, size=32, workers=1, progress=False)  # complete, same request: reopened as is
    assert cache_files(again.path) == first
    for kw, what in (({"source": b}, "source"), ({"size": 48}, "size")):
        with pytest.raises(CacheError, match="--overwrite") as err:
            prepare(kw.get("source", a), out, size=kw.get("size", 32), workers=1, progress=False)
        assert what in str(err.value)
    with pytest.raises(CacheError, match="split seed"):
        prepare(a, out, size=32, split_seed=5, workers=1, progress=False)
    # a partial cache (manifest not complete, no chunk done) of the same request resumes to the same bytes
    manifest = json.loads((out / "manifest.json").read_text())
    (out / "manifest.json").write_text(json.dumps({**manifest, "complete": False}))
    with pytest.raises(CacheError, match="--overwrite"):
        prepare(a, out, size=48, workers=1, progress=False)
    assert cache_files(prepare(a, out, size=32, workers=1, progress=False).path) == first
    # --overwrite replaces it
    assert prepare(b, out, size=48, workers=1, overwrite=True, progress=False).size == 48
    # a folder with other things in it is refused; overwrite writes beside them and keeps them
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(CacheError, match="not empty"):
        prepare(a, other, size=32, workers=1, progress=False)
    prepare(a, other, size=32, workers=1, progress=False, overwrite=True)
    assert (other / "notes.txt").read_text() == "mine"


def test_a_second_prepare_into_the_same_folder_is_refused(tmp_path):
    import fcntl

    out = tmp_path / "c"
    out.mkdir()
    fd = os.open(out, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # what a running prepare holds
        with pytest.raises(CacheError, match="another cxr prepare"):
            prepare(make_nih(tmp_path / "nih", n=4), out, size=16, workers=1, progress=False)
    finally:
        os.close(fd)


def test_leakage_check_always_runs(tmp_path, monkeypatch):
    import cxrkit.data.splits as splits

    src = make_nih(tmp_path / "nih", n=12)

    def leaky(table, label_names, fractions=(0.7, 0.1, 0.2), seed=0, **kw):  # splits images, not patients
        return pd.Series(np.resize(np.array(["train", "test"], dtype=object), len(table)), index=table.index)

    monkeypatch.setattr(splits, "patient_split", leaky)
    with pytest.raises(LeakageError, match="more than one"):
        prepare(src, tmp_path / "c", size=32, workers=1, progress=False)
    assert not (tmp_path / "c" / "manifest.json").exists()
    monkeypatch.undo()
    # an official split that leaks (patient 1 in both lists) fails just as loudly
    (src / "train_val_list.txt").write_text("00000000_000.png\n")
    (src / "test_list.txt").write_text("00000001_000.png\n")
    with pytest.raises(LeakageError):
        prepare(src, tmp_path / "c", size=32, workers=1, progress=False)


def test_full_disk_is_a_clear_error_and_resumes(tmp_path, monkeypatch):
    src = make_nih(tmp_path / "nih", n=12)
    out = tmp_path / "c"
    calls = {"n": 0}
    real = cache_work.decode_rows

    def decode_then_fill_disk(job, start, stop):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(job, start, stop)

    monkeypatch.setattr(cache_work, "decode_rows", decode_then_fill_disk)
    with pytest.raises(CacheError, match="disk full.*resumes"):
        prepare(src, out, size=32, workers=1, chunk_rows=4, progress=False)
    assert len(list((out / ".progress").glob("chunk_*.json"))) == 2
    monkeypatch.undo()

    def no_space(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", no_space, raising=False)
    with pytest.raises(CacheError, match="disk full"):
        prepare(src, out, size=32, workers=1, progress=False)
    monkeypatch.undo()
    resumed = prepare(src, out, size=32, workers=1, progress=False)
    reference = prepare(src, tmp_path / "ref", size=32, workers=1, chunk_rows=4, progress=False)
    assert cache_files(resumed.path) == cache_files(reference.path)


@pytest.mark.parametrize("crash_at", [1, 2, 5, 6, 9])
def test_compaction_resumes_after_a_crash(tmp_path, monkeypatch, crash_at):
    rows = np.arange(30, dtype=np.uint8)[:, None, None] * np.ones((1, 4, 4), np.uint8)
    ok = np.ones(30, bool)
    ok[[0, 4, 5, 17, 29]] = False
    path = tmp_path / "images.npy"
    np.save(path, rows)
    progress = tmp_path / ".progress"
    progress.mkdir()
    real, calls = cache_work.atomic_write_json, {"n": 0}

    def crash(p, obj):
        calls["n"] += 1
        if calls["n"] == crash_at:  # odd: block journalled, not yet recorded; even: destination written
            raise KeyboardInterrupt
        return real(p, obj)

    monkeypatch.setattr(cache_work, "atomic_write_json", crash)
    with pytest.raises(KeyboardInterrupt):
        cache_work.compact(path, ok, progress, block_bytes=3 * 16)
    monkeypatch.undo()
    cache_work.compact(path, ok, progress, block_bytes=3 * 16)
    result = np.load(path)
    assert np.array_equal(result, rows[ok])
    assert path.stat().st_size == 128 + result.nbytes
    cache_work.compact(path, ok, progress, block_bytes=3 * 16)  # idempotent once done
    assert np.array_equal(np.load(path), rows[ok])


def test_open_cache_refuses_missing_and_incomplete(tmp_path):
    with pytest.raises(CacheError, match="not found"):
        open_cache(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CacheError, match="cxr prepare"):
        open_cache(tmp_path / "empty")
    out = prepare(make_nih(tmp_path / "nih", n=6), tmp_path / "c", size=16, workers=1, progress=False).path
    manifest = json.loads((out / "manifest.json").read_text())
    (out / "manifest.json").write_text(json.dumps({**manifest, "complete": False}))
    with pytest.raises(CacheError, match="run cxr prepare again .* resume"):
        open_cache(out)
    (out / "manifest.json").write_text(json.dumps({**manifest, "format": "something-else"}))
    with pytest.raises(CacheError, match="not a cxrkit cache"):
        open_cache(out)
    (out / "manifest.json").write_text(json.dumps(manifest))
    (out / "images.npy").write_bytes((out / "images.npy").read_bytes()[:-256])
    with pytest.raises(CacheError, match="damaged"):
        open_cache(out)
