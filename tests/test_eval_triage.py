"""The reading-worklist simulation: priority helps abnormal cases only when scores are informative."""
from __future__ import annotations

import numpy as np
import pytest

from cxrkit.evaluation.triage import TriageError, _run_queue, simulate_worklist, triage_figure

PARAMS = dict(readers=2, arrival_rate=22.0, read_minutes=5.0, hours=400.0)


def _pool(seed=0, n=3000):
    rng = np.random.default_rng(seed)
    abnormal = rng.random(n) < 0.3
    return abnormal, rng


def test_informative_scores_reduce_abnormal_turnaround():
    abnormal, rng = _pool()
    scores = abnormal + rng.normal(0, 0.4, abnormal.size)
    r = simulate_worklist(scores, abnormal, seed=1, **PARAMS)
    assert r.mean_reduction_pct > 25 and r.p90_reduction_pct > 25
    assert r.priority_mean < r.fifo_mean


def test_random_scores_do_not():
    abnormal, rng = _pool(1)
    for seed in (1, 2):
        r = simulate_worklist(rng.random(abnormal.size), abnormal, seed=seed, **PARAMS)
        assert abs(r.mean_reduction_pct) < 10


def test_same_seed_same_result_and_figure(tmp_path):
    abnormal, rng = _pool(2, 200)
    s = rng.random(200)
    a = simulate_worklist(s, abnormal, seed=3, hours=8, read_dist="exponential")
    b = simulate_worklist(s, abnormal, seed=3, hours=8, read_dist="exponential")
    assert a.to_dict() == b.to_dict()
    png = triage_figure(a, tmp_path / "t.png")
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and (tmp_path / "t.png").stat().st_size == len(png)


def test_queue_mechanics():
    arrivals = np.array([0.0, 1.0, 2.0, 3.0])
    read = np.array([10.0, 1.0, 1.0, 1.0])
    fifo = _run_queue(arrivals, read, None, 1)
    assert fifo.tolist() == [10.0, 11.0, 12.0, 13.0]
    prio = _run_queue(arrivals, read, np.array([0, 0, 0, 9.0]), 1)  # case 3 jumps the queue when reader frees
    assert prio.tolist() == [10.0, 12.0, 13.0, 11.0]
    assert _run_queue(arrivals, read, None, 4).tolist() == (arrivals + read).tolist()


def test_bad_input_is_a_clear_error():
    with pytest.raises(TriageError, match="equal-length"):
        simulate_worklist(np.zeros(3), np.zeros(4, bool))
    with pytest.raises(TriageError, match="positive"):
        simulate_worklist(np.zeros(3), np.zeros(3, bool), readers=0)
