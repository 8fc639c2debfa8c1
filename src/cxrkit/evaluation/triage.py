"""Normal/abnormal triage: a discrete-event simulation of a reading worklist, first-in-first-out versus priority by
abnormality score.

Cases arrive as a Poisson process; each is a draw (with replacement) from the evaluated images, so it carries a
real score and a real abnormal/normal label. N readers take the next case whenever free. Both policies see the same
arrivals and reading times (common random numbers), so the difference is the policy alone.
"""
from __future__ import annotations

import heapq
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from cxrkit.data.errors import CxrError


class TriageError(CxrError):
    """Bad triage-simulation input (no cases, no readers, mismatched arrays)."""


@dataclass
class TriageResult:
    """Turnaround (arrival to report, minutes) per policy for abnormal cases, and the improvement."""

    fifo_mean: float
    fifo_p90: float
    priority_mean: float
    priority_p90: float
    mean_reduction_pct: float
    p90_reduction_pct: float
    n_cases: int
    n_abnormal: int
    params: dict
    fifo_turnaround: np.ndarray = field(repr=False)
    priority_turnaround: np.ndarray = field(repr=False)
    abnormal: np.ndarray = field(repr=False)

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in ("fifo_turnaround", "priority_turnaround", "abnormal"):
            d.pop(k)
        return d


def _run_queue(arrivals: np.ndarray, read_times: np.ndarray, priority: np.ndarray | None, readers: int) -> np.ndarray:
    """Finish time of every case; ``priority`` None = FIFO, else the highest priority waiting case goes first."""
    n = len(arrivals)
    finish = np.empty(n)
    free = [0.0] * readers  # heap of times each reader becomes free
    waiting: list[tuple[float, int]] = []
    nxt = 0
    while nxt < n or waiting:
        t_free = heapq.heappop(free)
        if not waiting:  # reader idles until the next arrival
            t_free = max(t_free, arrivals[nxt])
        while nxt < n and arrivals[nxt] <= t_free:
            heapq.heappush(waiting, (-priority[nxt] if priority is not None else 0.0, nxt))
            nxt += 1
        _, i = heapq.heappop(waiting)  # ties (and FIFO) break by arrival order
        finish[i] = t_free + read_times[i]
        heapq.heappush(free, finish[i])
    return finish


def simulate_worklist(scores: np.ndarray, abnormal: np.ndarray, *, readers: int = 2, arrival_rate: float = 20.0,
                      read_minutes: float = 5.0, hours: float = 100.0, read_dist: str = "lognormal",
                      read_sigma: float = 0.5, seed: int | np.random.Generator = 0) -> TriageResult:
    """Simulate ``hours`` of arrivals at ``arrival_rate`` cases/hour read by ``readers`` readers (mean reading time
    ``read_minutes``, lognormal with log-sd ``read_sigma`` or exponential); all arrived cases are read to the end.

    Returns mean and 90th-percentile turnaround of abnormal cases under FIFO and under priority by score.
    """
    scores, abnormal = np.asarray(scores, np.float64), np.asarray(abnormal).astype(bool)
    if scores.shape != abnormal.shape or scores.ndim != 1 or scores.size == 0:
        raise TriageError(f"scores and abnormal labels must be equal-length non-empty vectors, got {scores.shape} "
                          f"and {abnormal.shape}")
    if readers < 1 or arrival_rate <= 0 or read_minutes <= 0 or hours <= 0:
        raise TriageError("readers, arrival rate, reading minutes and hours must all be positive")
    if read_dist not in ("lognormal", "exponential"):
        raise TriageError(f"read_dist must be 'lognormal' or 'exponential', not {read_dist!r}")
    rng = np.random.default_rng(seed)
    horizon = hours * 60.0
    gaps = rng.exponential(60.0 / arrival_rate, size=int(arrival_rate * hours * 2 + 50))
    arrivals = np.cumsum(gaps)
    while arrivals[-1] < horizon:  # rare: draw more until past the horizon
        arrivals = np.r_[arrivals, arrivals[-1] + np.cumsum(rng.exponential(60.0 / arrival_rate, size=100))]
    arrivals = arrivals[arrivals < horizon]
    n = len(arrivals)
    if n == 0:
        raise TriageError("no case arrived in the simulated period: raise --hours or --arrival-rate")
    pick = rng.integers(0, len(scores), size=n)
    s, ab = scores[pick], abnormal[pick]
    if read_dist == "lognormal":  # mean of a lognormal is exp(mu + sigma^2/2)
        read = rng.lognormal(np.log(read_minutes) - read_sigma ** 2 / 2, read_sigma, size=n)
    else:
        read = rng.exponential(read_minutes, size=n)
    fifo = _run_queue(arrivals, read, None, readers) - arrivals
    prio = _run_queue(arrivals, read, s, readers) - arrivals
    params = {"readers": readers, "arrival_rate_per_hour": arrival_rate, "read_minutes": read_minutes,
              "hours": hours, "read_dist": read_dist, "read_sigma": read_sigma,
              "seed": seed if isinstance(seed, int) else None,
              "utilisation": float(arrival_rate * read_minutes / 60.0 / readers)}
    if not ab.any():
        nan = float("nan")
        return TriageResult(nan, nan, nan, nan, nan, nan, n, 0, params, fifo, prio, ab)
    fm, fp = float(fifo[ab].mean()), float(np.percentile(fifo[ab], 90))
    pm, pp = float(prio[ab].mean()), float(np.percentile(prio[ab], 90))
    red = lambda a, b: float(100.0 * (a - b) / a) if a > 0 else 0.0  # noqa: E731
    return TriageResult(fm, fp, pm, pp, red(fm, pm), red(fp, pp), n, int(ab.sum()), params, fifo, prio, ab)


def triage_figure(result: TriageResult, path: str | Path | None = None) -> bytes:
    """Cumulative distribution of abnormal-case turnaround, FIFO vs priority; PNG bytes (also written to ``path``)."""
    import io

    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 3.6), dpi=100)
    ax = fig.add_subplot()
    for name, t in (("first-in-first-out", result.fifo_turnaround), ("priority by score", result.priority_turnaround)):
        v = np.sort(t[result.abnormal])
        if v.size:
            ax.step(v, np.arange(1, v.size + 1) / v.size, where="post", label=name)
    ax.set_xlabel("turnaround of abnormal cases (minutes)")
    ax.set_ylabel("fraction reported")
    ax.set_title(f"{result.params['readers']} readers, {result.params['arrival_rate_per_hour']:g} cases/h, "
                 f"mean read {result.params['read_minutes']:g} min", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    data = buf.getvalue()
    if path is not None:
        Path(path).write_bytes(data)
    return data
