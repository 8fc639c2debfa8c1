"""Usage mistakes through the installed `cxr` script: click's short usage message, exit 2, never a traceback."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"


def _cxr() -> str:
    beside = Path(sys.executable).with_name("cxr")
    found = str(beside) if beside.is_file() else shutil.which("cxr")
    if not found:
        pytest.fail("the `cxr` console script is not installed (pip install -e .)")
    return found


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")])),
               COLUMNS="100", NO_COLOR="1")
    return subprocess.run([_cxr(), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("args, usage, message", [
    (("train", "cache/phantom"), "Usage: cxr train", "Missing option '--out'"),
    (("train", "cache/phantom", "--epoch", "3", "--out", "runs/r1"), "Usage: cxr train", "No such option: --epoch"),
    (("serve", "runs/r1/bundle", "--port", "99999"), "Usage: cxr serve", "'--port'"),
    (("trian",), "Usage: cxr ", "Did you mean 'train'"),  # click may add close names ('pretrain')
    (("predict", "--frobnicate"), "Usage: cxr predict", "No such option: --frobnicate"),
])
def test_usage_error_is_short_and_exits_2(tmp_path, args, usage, message):
    proc = _run(*args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    assert usage in proc.stderr and message in proc.stderr
    assert f"Try 'cxr" in proc.stderr
    assert len(proc.stderr.splitlines()) <= 8, proc.stderr


def test_epoch_typo_suggests_epochs(tmp_path):
    proc = _run("train", "c", "--out", "r", "--epoch", "3", cwd=tmp_path)
    assert proc.returncode == 2 and "--epochs" in proc.stderr.split("Error:")[1]


def test_cxr_error_is_one_line_exit_2(tmp_path):
    proc = _run("data", "summary", str(tmp_path / "missing"), cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: ") and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full for a real ENOSPC")
def test_full_disk_is_one_line_exit_1(tmp_path, monkeypatch, capsys):
    """A write that hits a full disk (the kernel's own ENOSPC, from /dev/full) ends any command with one line that
    says what to do, not a traceback."""
    import cxrkit.training.curve as curve
    from cxrkit.cli import main

    def fills_the_disk(spec, progress=print):
        with open("/dev/full", "wb", buffering=0) as fh:
            fh.write(b"learning_curve.json")

    monkeypatch.setattr(curve, "learning_curve", fills_the_disk)
    (tmp_path / "cache").mkdir()
    with pytest.raises(SystemExit) as exit_:
        main(["learning-curve", str(tmp_path / "cache"), "--out", str(tmp_path / "lc")])
    err = capsys.readouterr().err
    assert exit_.value.code == 1 and "Traceback" not in err
    assert err.startswith("error: the disk is full (No space left on device)") and "--resume" in err, err
    assert len(err.strip().splitlines()) == 1


def test_unusable_output_path_is_one_line_exit_2(tmp_path, monkeypatch, capsys):
    """An --out under a regular file (the kernel's own ENOTDIR) is a usage mistake: one line naming the path, exit 2;
    CXR_DEBUG=1 keeps the traceback, and OS errors that are not about a path keep theirs."""
    import errno

    import cxrkit.training.curve as curve
    from cxrkit.cli import main

    def makes_its_folder(spec, progress=print):
        Path(spec.out).mkdir(parents=True, exist_ok=True)

    monkeypatch.setattr(curve, "learning_curve", makes_its_folder)
    (tmp_path / "cache").mkdir()
    (tmp_path / "a_file").write_text("not a folder")
    out = tmp_path / "a_file" / "lc"
    with pytest.raises(SystemExit) as exit_:
        main(["learning-curve", str(tmp_path / "cache"), "--out", str(out)])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert err.startswith(f"error: cannot use {out}: Not a directory. Check the path"), err

    monkeypatch.setenv("CXR_DEBUG", "1")
    with pytest.raises(NotADirectoryError):
        main(["learning-curve", str(tmp_path / "cache"), "--out", str(out)])
    monkeypatch.delenv("CXR_DEBUG")

    def io_error(spec, progress=print):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(curve, "learning_curve", io_error)
    with pytest.raises(OSError):
        main(["learning-curve", str(tmp_path / "cache"), "--out", str(tmp_path / "lc")])
