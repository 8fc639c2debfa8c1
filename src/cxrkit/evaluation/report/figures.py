"""Report figures as PNG bytes (matplotlib Figure objects, no pyplot state): ROC / PR curves with bootstrap bands,
reliability diagrams, subgroup forest plots."""
from __future__ import annotations

import io
import math
from typing import Sequence

import numpy as np

from cxrkit.evaluation.bootstrap import ClusterBootstrap

GRID = np.linspace(0, 1, 101)


def _figure(n_panels: int, cols: int = 5, size: float = 2.3):
    from matplotlib.figure import Figure

    rows = max(1, math.ceil(n_panels / cols))
    cols = min(cols, max(n_panels, 1))
    fig = Figure(figsize=(cols * size, rows * size), dpi=90)
    fig.subplots_adjust(left=0.06, right=0.98, bottom=0.07, top=0.95, wspace=0.35, hspace=0.55)
    axes = [fig.add_subplot(rows, cols, i + 1) for i in range(n_panels)]
    return fig, axes


def _png(fig, tight: bool = True) -> bytes:
    if tight:  # tight_layout measures every label: fine for one axis, slow on a 15-panel grid
        fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _curves(y: np.ndarray, s: np.ndarray, W: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """TPR at GRID FPR and precision at GRID recall for each weight row (R x len(GRID) each)."""
    order = np.argsort(-s, kind="mergesort")
    y, s, W = y[order], s[order], np.asarray(W, np.float64)[:, order]
    ends = np.r_[np.flatnonzero(s[1:] != s[:-1]), len(s) - 1]
    tps, fps = np.cumsum(W * y, axis=1)[:, ends], np.cumsum(W * (1 - y), axis=1)[:, ends]
    P, N = tps[:, -1:], fps[:, -1:]
    tpr_out, prec_out = np.full((len(W), GRID.size), np.nan), np.full((len(W), GRID.size), np.nan)
    for r in range(len(W)):
        if P[r, 0] > 0 and N[r, 0] > 0:
            tpr_out[r] = np.interp(GRID, np.r_[0, fps[r] / N[r, 0]], np.r_[0, tps[r] / P[r, 0]])
        if P[r, 0] > 0:
            rec = np.r_[0, tps[r] / P[r, 0]]
            prec = np.r_[1, tps[r] / np.maximum(tps[r] + fps[r], 1e-12)]
            # interpolated precision: best precision at recall >= r (the usual monotone PR envelope)
            prec_out[r] = np.interp(GRID, rec, np.maximum.accumulate(prec[::-1])[::-1])
    return tpr_out, prec_out


def roc_pr_figures(Y: np.ndarray, S: np.ndarray, label_names: Sequence[str], boot: ClusterBootstrap,
                   max_band_reps: int = 200) -> tuple[bytes, bytes]:
    """(ROC PNG, PR PNG): one panel per finding, the curve and its 95% patient-bootstrap band."""
    import warnings

    fig_roc, ax_roc = _figure(len(label_names))
    fig_pr, ax_pr = _figure(len(label_names))
    reps = slice(0, min(boot.n_boot, max_band_reps))
    for c, name in enumerate(label_names):
        known = np.flatnonzero(~np.isnan(Y[:, c]))
        y, s = (Y[known, c] >= 0.5).astype(np.float64), S[known, c]
        for ax, title in ((ax_roc[c], name), (ax_pr[c], name)):
            ax.set_title(title, fontsize=8)
            ax.set_xticks([0, 0.5, 1]), ax.set_yticks([0, 0.5, 1])  # few ticks: legible and quick to draw
            ax.tick_params(labelsize=6)
            ax.set_xlim(0, 1), ax.set_ylim(0, 1.02)
        ax_roc[c].plot([0, 1], [0, 1], color="0.7", lw=0.6, ls="--")
        if y.size == 0 or y.min() == y.max():
            for ax in (ax_roc[c], ax_pr[c]):
                ax.text(0.5, 0.5, "undefined:\nno positives\nor negatives", ha="center", va="center", fontsize=7)
            continue
        tpr, prec = _curves(y, s, np.ones((1, y.size)))
        ax_roc[c].plot(GRID, tpr[0], lw=1.2)
        ax_pr[c].plot(GRID, prec[0], lw=1.2)
        ax_pr[c].axhline(y.mean(), color="0.7", lw=0.6, ls="--")
        if boot.n_boot:
            btpr, bprec = _curves(y, s, boot.weights(known, reps))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                for ax, b in ((ax_roc[c], btpr), (ax_pr[c], bprec)):
                    lo, hi = np.nanpercentile(b, 2.5, axis=0), np.nanpercentile(b, 97.5, axis=0)
                    ax.fill_between(GRID, lo, hi, alpha=0.25, lw=0)
    for ax in ax_roc:
        ax.set_xlabel("1 - specificity", fontsize=6), ax.set_ylabel("sensitivity", fontsize=6)
    for ax in ax_pr:
        ax.set_xlabel("recall", fontsize=6), ax.set_ylabel("precision", fontsize=6)
    return _png(fig_roc, tight=False), _png(fig_pr, tight=False)


def reliability_figure(calibration: dict, label_names: Sequence[str]) -> bytes:
    """Reliability diagram per finding (observed frequency against mean predicted probability per bin)."""
    fig, axes = _figure(len(label_names))
    for ax, name in zip(axes, label_names):
        rel = calibration["per_class"][name]
        ax.plot([0, 1], [0, 1], color="0.7", lw=0.6, ls="--")
        if rel["confidence"]:
            ax.plot(rel["confidence"], rel["observed"], marker="o", ms=2.5, lw=1)
        ece = rel["ece"]
        ax.set_title(f"{name}\nECE {ece:.3f}" if ece == ece else name, fontsize=7)
        ax.set_xlim(0, 1), ax.set_ylim(0, 1)
        ax.tick_params(labelsize=6)
    return _png(fig, tight=False)


def forest_figure(subgroups: dict, overall: float | None, key: str = "mean_auroc",
                  xlabel: str = "mean AUROC") -> bytes:
    """Forest plot of a metric (point + 95% CI) for every analysed subgroup, with the overall value as a line."""
    from matplotlib.figure import Figure

    labels, points, lows, highs = [], [], [], []
    for dim, groups in subgroups.get("dimensions", {}).items():
        for g, e in groups.items():
            v = e.get(key) if key != "underdiagnosis_rate" else e.get("underdiagnosis", {}).get(key)
            src = e if key != "underdiagnosis_rate" else e.get("underdiagnosis", {})
            if v is None:
                continue
            labels.append(f"{dim}: {g} (n={e['n_images']})")
            points.append(v)
            lows.append(src.get(f"{key}_ci_low") if src.get(f"{key}_ci_low") is not None else v)
            highs.append(src.get(f"{key}_ci_high") if src.get(f"{key}_ci_high") is not None else v)
    fig = Figure(figsize=(6.5, 0.3 * max(len(labels), 3) + 1.0), dpi=90)
    ax = fig.add_subplot()
    if labels:
        yy = np.arange(len(labels))[::-1]
        p = np.array(points)
        ax.errorbar(p, yy, xerr=[p - np.array(lows), np.array(highs) - p], fmt="o", ms=4, capsize=2)
        ax.set_yticks(yy, labels, fontsize=7)
    else:
        ax.text(0.5, 0.5, "no subgroup large enough to analyse", ha="center", va="center", transform=ax.transAxes)
    if overall is not None:
        ax.axvline(overall, color="0.4", ls="--", lw=0.8, label="overall")
        ax.legend(fontsize=7, loc="lower right")
    ax.set_xlabel(xlabel, fontsize=8)
    ax.tick_params(axis="x", labelsize=7)
    return _png(fig)
