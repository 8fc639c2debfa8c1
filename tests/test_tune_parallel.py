"""`cxr tune` with several workers: `--devices` placement, two workers on one SQLite study with one SIGKILLed and the
command rerun, and a study on a real PostgreSQL server (Debian's, started here). Tiniest configs: cxr_tiny at 32 px,
one epoch per trial."""
from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")

from test_tune import FIXED, cache  # noqa: E402,F401  (the module's tiny cache fixture)

from cxrkit.tuning.devices import parse_devices, plan_workers  # noqa: E402
from cxrkit.tuning.study import TuneError, TuneSpec, run_study  # noqa: E402

ONE_EPOCH = {**FIXED, "epochs": 1}


def _space_file(path: Path, params: str) -> Path:
    fixed = "\n".join(f"{k} = {json.dumps(v) if not isinstance(v, bool) else str(v).lower()}"
                      for k, v in ONE_EPOCH.items() if v is not None)
    path.write_text(f'[study]\npruner = "none"\n[fixed]\n{fixed}\n[params]\n{params}\n')
    return path


def test_devices_place_one_worker_per_gpu():
    assert parse_devices("0,1, 3") == ["0", "1", "3"]
    for bad in ("0,0", "gpu0", "", "1,-2"):
        with pytest.raises(TuneError):
            parse_devices(bad)
    plans = plan_workers(["2", "5"], ["CACHE", "--out", "S"], env={"PATH": "/bin", "CUDA_VISIBLE_DEVICES": "0,1"})
    assert [(p.slot, p.env["CUDA_VISIBLE_DEVICES"]) for p in plans] == [(0, "2"), (1, "5")]
    assert [p.argv[-2:] for p in plans] == [["--slot", "0"], ["--slot", "1"]]
    assert all(p.argv[1:6] == ["-m", "cxrkit.cli", "tune", "CACHE", "--out"] and p.env["PATH"] == "/bin"
               for p in plans)


def _trial_files(out: Path) -> list[dict]:
    found = []
    for f in sorted((out / "trials").glob("*/trial.json")) if (out / "trials").is_dir() else []:
        try:
            found.append(json.loads(f.read_text()))
        except ValueError:  # being written
            pass
    return found


def test_two_workers_one_killed_and_the_command_rerun(tmp_path, cache):  # noqa: F811
    """`cxr tune --devices 0,1` runs two workers on one SQLite study (on this CPU machine both share the CPU);
    the worker of the first trial is SIGKILLed mid-trial, the launcher says so and exits 1; the command rerun
    completes the study: exactly 2 finished trials, the killed one FAIL and rerun with its parameters, each trial a
    run folder with a bundle, each recorded with its worker's own CUDA_VISIBLE_DEVICES."""
    space = _space_file(tmp_path / "s.toml", 'lr = {type = "float", low = 1e-3, high = 3e-2, log = true}')
    out = tmp_path / "study"
    cmd = [sys.executable, "-m", "cxrkit.cli", "tune", str(cache), "--space", str(space), "--trials", "2",
           "--out", str(out), "--devices", "0,1", "--heartbeat", "1", "--grace", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launcher = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline, victim = time.monotonic() + 90, None
        while time.monotonic() < deadline and victim is None:
            # trial.json is written once the objective runs, i.e. after the trial's first heartbeat
            victim = next(iter(_trial_files(out)), None)  # the first trial either worker started
            time.sleep(0.05)
        assert victim is not None, "no worker started a trial"
        os.kill(victim["pid"], signal.SIGKILL)
        killed_at = time.monotonic()
        log, _ = launcher.communicate(timeout=120)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode == 1, log
    slot = victim["slot"]
    assert f"worker {slot} on GPU {slot} exited with code -9" in log
    assert victim["cuda_visible_devices"] == str(slot)
    started = {line.split(":")[0] for line in log.splitlines() if ": pid " in line}
    assert started == {"worker 0 on GPU 0", "worker 1 on GPU 1"}

    time.sleep(max(0.0, killed_at + 2.2 - time.monotonic()))  # past the grace period of the killed trial
    # the command rerun, as one worker in this process (two more worker processes would only add start-up time)
    from cxrkit.cli import main

    main(cmd[3:cmd.index("--devices")] + cmd[cmd.index("--devices") + 2:])
    trials = sorted(optuna.load_study(study_name="cxr-tune", storage=f"sqlite:///{out / 'study.db'}").trials,
                    key=lambda t: t.number)
    states = [t.state.name for t in trials]
    assert states.count("COMPLETE") == 2 and states.count("FAIL") == 1 and len(states) == 3, states
    killed = trials[victim["number"]]
    assert killed.state.name == "FAIL"
    retried = [t for t in trials if t.system_attrs.get("failed_trial") == killed.number]
    assert len(retried) == 1 and retried[0].params == killed.params and retried[0].state.name == "COMPLETE"
    for t in trials:
        if t.state.name == "COMPLETE":
            assert (out / t.user_attrs["bundle"] / "model.safetensors").is_file()
    for t in trials:  # each trial ran on its worker's own device (the rerun: this process, no --devices)
        w = t.user_attrs["worker"]
        assert w["cuda_visible_devices"] == (str(w["slot"]) if w["pid"] != os.getpid() else
                                             os.environ.get("CUDA_VISIBLE_DEVICES"))


# -- PostgreSQL ------------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def postgres():
    """A throw-away PostgreSQL server (Debian's binaries) in a temp folder on a free 127.0.0.1 port; as root it
    runs as `nobody` (postgres refuses root). Yields a postgresql:// URL."""
    pytest.importorskip("psycopg", reason="the tune extra's PostgreSQL driver: pip install 'cxrkit[tune]'")
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        pytest.skip("Debian's postgresql server is not installed (apt-get install postgresql; .ci/run installs it)")
    bindir = Path(found[-1]).parent
    run_as: list[str] = []
    base = Path(tempfile.mkdtemp(prefix="cxr-pg-"))  # not tmp_path: its parents are closed to `nobody`
    if os.geteuid() == 0:
        runuser = shutil.which("runuser")
        if runuser is None:
            pytest.skip("running as root without runuser: cannot start postgres as an unprivileged user")
        run_as = [runuser, "-u", "nobody", "--"]
        os.chown(base, 65534, 65534)
    port, data = _free_port(), base / "data"
    try:
        subprocess.run([*run_as, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "cxr", "--no-sync",
                        "-E", "UTF8"], check=True, capture_output=True, timeout=120)
        subprocess.run([*run_as, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(base / "log"), "-w", "-t", "60",
                        "-o", f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off", "start"],
                       check=True, capture_output=True, timeout=120)
        yield f"postgresql://cxr@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*run_as, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(base, ignore_errors=True)


def test_study_on_a_postgresql_server(tmp_path, cache, postgres):  # noqa: F811
    """The same study code on PostgreSQL: a 1-trial run, then a rerun asking for 2 continues it (the URL as a user
    types it, postgresql://, served by psycopg 3); the report reads the study back from the server."""
    from cxrkit.tuning.report import write_report
    from cxrkit.tuning.space import read_space

    space = read_space(_space_file(tmp_path / "s.toml", 'head = ["linear", "attention"]'))
    spec = dict(cache=str(cache), space=space, out=str(tmp_path / "pg"), study="pg-study", storage=postgres)
    assert len(run_study(TuneSpec(trials=1, **spec)).trials) == 1
    trials = sorted(run_study(TuneSpec(trials=2, **spec)).trials, key=lambda t: t.number)
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    assert not (tmp_path / "pg" / "study.db").exists()  # nothing went to the SQLite default
    summary = write_report(tmp_path / "pg")
    assert summary["study"] == "pg-study" and Path(summary["bundle"], "model.safetensors").is_file()
    assert json.loads((tmp_path / "pg" / "tune.json").read_text())["storage"] == postgres


@pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning")  # study.ask() outside optimize, on purpose
def test_a_trial_left_without_any_heartbeat_is_failed_and_retried(tmp_path):
    """A worker killed between creating a trial and its first heartbeat leaves a RUNNING trial Optuna's stale check
    never sees; once older than the grace period it is failed here and its parameters are queued again."""
    import datetime as dt

    from cxrkit.tuning.study import fail_stale_trials, make_storage

    storage = make_storage(f"sqlite:///{tmp_path / 'db.sqlite'}", heartbeat_s=1, grace_s=2)
    study = optuna.create_study(storage=storage, study_name="s")
    orphan = study.ask({"lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)})
    assert fail_stale_trials(study, grace_s=3600) == []  # young: it may still be starting
    import sqlite3

    with sqlite3.connect(tmp_path / "db.sqlite") as db:  # age it: started an hour ago
        db.execute("UPDATE trials SET datetime_start = ? WHERE trial_id = ?",
                   ((dt.datetime.now() - dt.timedelta(hours=1)).isoformat(sep=" "), orphan._trial_id))
    assert fail_stale_trials(study, grace_s=2) == [orphan.number]
    trials = study.get_trials()
    assert [t.state.name for t in trials] == ["FAIL", "WAITING"]
    assert trials[1].params == trials[0].params and trials[1].system_attrs["failed_trial"] == orphan.number


def test_two_machines_share_one_postgresql_study_each_with_its_own_out(tmp_path, cache, postgres):  # noqa: F811
    """Workers on several machines: one PostgreSQL study, each machine its own --out on its own disk. Both add
    trials to the one study; a report on either machine reads every trial from the server, keeps the local best
    bundle only when the best trial is local, and says where the others ran; --top-k counts local bundles and
    says how many are elsewhere."""
    from cxrkit.tuning.report import top_trials, write_report
    from cxrkit.tuning.space import read_space

    space = read_space(_space_file(tmp_path / "s.toml", 'lr = {type = "float", low = 1e-4, high = 1e-1, log = true}'))
    common = dict(cache=str(cache), space=space, study="two-machines", storage=postgres)
    run_study(TuneSpec(trials=2, out=str(tmp_path / "machine_a"), worker=0, **common))
    study = run_study(TuneSpec(trials=4, out=str(tmp_path / "machine_b"), worker=1, **common))
    trials = sorted(study.trials, key=lambda t: t.number)
    assert [t.state.name for t in trials] == ["COMPLETE"] * 4
    local_a = sorted(p.name for p in (tmp_path / "machine_a" / "trials").iterdir())
    local_b = sorted(p.name for p in (tmp_path / "machine_b" / "trials").iterdir())
    assert local_a == ["0000", "0001"] and local_b == ["0002", "0003"]

    best = study.best_trial.number
    for machine, local in (("machine_a", local_a), ("machine_b", local_b)):
        summary = write_report(tmp_path / machine)
        assert summary["best_trial"] == best
        page = (tmp_path / machine / "report.html").read_text()
        assert "2 finished trials ran under another --out" in page
        if f"{best:04d}" in local:
            assert (tmp_path / machine / "best_bundle" / "model.safetensors").is_file()
            assert "elsewhere" not in summary
        else:
            assert summary["bundle"] is None and not (tmp_path / machine / "best_bundle").exists()
            assert f"trials/{best:04d}" in summary["elsewhere"]
        assert len(top_trials(tmp_path / machine, 2)) == 2
        with pytest.raises(TuneError, match="2 more ran under another worker's --out"):
            top_trials(tmp_path / machine, 3)
