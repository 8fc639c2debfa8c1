"""The learning-curve figure: test mean AUROC (95 % CI bars) against labelled films, one line per recipe."""
from __future__ import annotations

from pathlib import Path


def curve_figure(report: dict, path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recipes = list(dict.fromkeys(r["recipe"] for r in report["results"]))
    if len({r["fraction"] for r in report["results"]}) == 1:
        return _dot_plot(report, recipes, path, plt)
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for i, name in enumerate(recipes):
        rs = sorted((r for r in report["results"] if r["recipe"] == name), key=lambda r: r["n_labelled"])
        x = [r["n_labelled"] * (1 + 0.02 * (i - (len(recipes) - 1) / 2)) for r in rs]  # dodge overlapping bars
        y = [r["mean_auroc"] if r["mean_auroc"] is not None else float("nan") for r in rs]
        lo = [max(0.0, yy - (r["ci_low"] if r["ci_low"] is not None else yy)) for yy, r in zip(y, rs)]
        hi = [max(0.0, (r["ci_high"] if r["ci_high"] is not None else yy) - yy) for yy, r in zip(y, rs)]
        ax.errorbar(x, y, yerr=[lo, hi], marker="o", capsize=3, label=name)
    ax.axhline(0.5, color="grey", lw=0.8, ls=":")
    ax.set_xscale("log")
    ax.set_xlabel("labelled films (train + validation, mean per fold)")
    ax.set_ylabel("test mean AUROC (95% CI)")
    n = report["results"][0]["n_test"] if report["results"] else 0
    ax.set_title(f"Learning curve: {report['folds']} fold(s), {n} test films", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def _ci(r: dict) -> tuple[float, float, float]:
    y = r["mean_auroc"] if r["mean_auroc"] is not None else float("nan")
    lo = y - r["ci_low"] if r["ci_low"] is not None else 0.0
    hi = r["ci_high"] - y if r["ci_high"] is not None else 0.0
    return y, max(lo, 0.0), max(hi, 0.0)


def _dot_plot(report: dict, recipes: list[str], path, plt) -> Path:
    """One label budget: the recipes side by side, mean AUROC with its CI, and beside it each recipe's paired
    difference to the first recipe (same films, same bootstrap draws: narrower than the side-by-side CIs)."""
    rows = [next(r for r in report["results"] if r["recipe"] == name) for name in recipes]
    paired = any(r.get("vs_reference") for r in rows)
    fig, axes = plt.subplots(1, 2 if paired else 1, figsize=(10.5 if paired else 6.4, 1.6 + 0.45 * len(recipes)),
                             dpi=120, sharey=True, squeeze=False)
    ax = axes[0, 0]
    for i, r in enumerate(rows):
        y, lo, hi = _ci(r)
        ax.errorbar([y], [i], xerr=[[lo], [hi]], marker="o", capsize=3, color=f"C{i}")
    ax.set_yticks(range(len(recipes)), recipes, fontsize=8)
    ax.invert_yaxis()
    r0 = report["results"][0]
    ax.set_xlabel("test mean AUROC (95% CI)")
    ax.set_title(f"{report['folds']} fold(s), {r0['n_test']} test films, {r0['n_labelled']:.0f} labelled films per fold",
                 fontsize=10)
    ax.grid(alpha=0.3)
    if paired:
        dx = axes[0, 1]
        for i, r in enumerate(rows):
            vs = r.get("vs_reference")
            if not vs or vs["diff"] is None or vs["ci_low"] is None:
                continue
            dx.errorbar([vs["diff"]], [i], xerr=[[vs["diff"] - vs["ci_low"]], [vs["ci_high"] - vs["diff"]]],
                        marker="o", capsize=3, color=f"C{i}")
            dx.annotate(f"{vs['diff']:+.3f} [{vs['ci_low']:+.3f}, {vs['ci_high']:+.3f}]", (vs["ci_high"], i),
                        xytext=(4, 0), textcoords="offset points", va="center", fontsize=7)
        dx.axvline(0.0, color="grey", lw=0.8)
        dx.set_xlabel(f"difference to {recipes[0]} (paired 95% CI)")
        dx.set_title("paired difference", fontsize=10)
        dx.grid(alpha=0.3)
        lo, hi = dx.get_xlim()
        dx.set_xlim(lo, hi + 0.6 * (hi - lo))  # room for the labels
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
