"""`cxr tune --devices 0,1,...`: one worker process per GPU, each seeing only its own (CUDA_VISIBLE_DEVICES), all
sharing the study through its storage; so one trial runs per GPU. Without --devices trials run one at a time in
the calling process (a CPU machine, or one GPU)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass

from cxrkit.tuning.study import TuneError


@dataclass(frozen=True)
class WorkerPlan:
    slot: int
    device: str
    env: dict
    argv: list


def parse_devices(text: str) -> list[str]:
    """``"0,1,3"`` -> ``["0", "1", "3"]``; ``"all"`` -> every GPU torch sees. Refuses repeats and non-numbers."""
    text = text.strip()
    if text == "all":
        import torch

        n = torch.cuda.device_count()
        if n == 0:
            raise TuneError("--devices all: no CUDA GPU is visible here; leave --devices out to run trials one at a "
                            "time on the CPU")
        return [str(i) for i in range(n)]
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts or not all(p.isdigit() for p in parts):
        raise TuneError(f"--devices takes GPU numbers like 0,1,2 (or 'all'), got {text!r}")
    if len(set(parts)) != len(parts):
        raise TuneError(f"--devices lists a GPU twice ({text!r}); one trial runs per GPU")
    return parts


def plan_workers(devices: list[str], worker_argv: list[str], env: dict | None = None) -> list[WorkerPlan]:
    """One worker per device: the same `cxr tune` arguments plus ``--slot i``, with CUDA_VISIBLE_DEVICES set to
    that device (the trial's ``device = "auto"`` then finds exactly one GPU, cuda:0)."""
    base = dict(os.environ if env is None else env)
    plans = []
    for slot, device in enumerate(devices):
        child_env = {**base, "CUDA_VISIBLE_DEVICES": device}
        plans.append(WorkerPlan(slot, device, child_env,
                                [sys.executable, "-m", "cxrkit.cli", "tune", *worker_argv, "--slot", str(slot)]))
    return plans


def run_workers(plans: list[WorkerPlan], echo=print) -> int:
    """Start every worker, wait for all; Ctrl-C / SIGTERM goes on to them. Returns 0 if all finished cleanly."""
    procs = [(p, subprocess.Popen(p.argv, env=p.env)) for p in plans]
    for p, proc in procs:
        echo(f"worker {p.slot} on GPU {p.device}: pid {proc.pid}")

    def forward(signum, frame):  # noqa: ARG001
        for _, proc in procs:
            if proc.poll() is None:
                proc.send_signal(signum)

    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        codes = [(p, proc.wait()) for p, proc in procs]
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
    bad = [(p, c) for p, c in codes if c != 0]
    for p, c in bad:
        echo(f"worker {p.slot} on GPU {p.device} exited with code {c}; rerun the same command to continue the study")
    return 1 if bad else 0


__all__ = ["WorkerPlan", "parse_devices", "plan_workers", "run_workers"]
