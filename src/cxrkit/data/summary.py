"""What is in a prepared cache: per-split prevalence, patients, age, sex and view (`cxr data summary`)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from cxrkit import RESEARCH_NOTICE
from cxrkit.data.cache_read import SPLITS, Cache

AGE_BINS = tuple(range(0, 101, 10))  # last bin is [90, 100]; ages above 100 are counted in it too
GROUPS = (*SPLITS, "all")


def _share(df: pd.DataFrame, label_names) -> dict:
    y = df[list(label_names)].to_numpy(dtype=np.float32)
    known = ~np.isnan(y)
    pos = (np.nan_to_num(y, nan=0.0) >= 0.5) & known  # soft labels count as positive from 0.5
    n_known, n_pos = known.sum(axis=0), pos.sum(axis=0)
    ages = df["age"].to_numpy(dtype=np.float64)
    ages = ages[np.isfinite(ages)]
    hist, _ = np.histogram(np.clip(ages, AGE_BINS[0], AGE_BINS[-1]), bins=AGE_BINS)
    return {
        "images": int(len(df)),
        "patients": int(df["patient_id"].nunique()),
        "positives": {n: int(p) for n, p in zip(label_names, n_pos)},
        "known": {n: int(k) for n, k in zip(label_names, n_known)},
        "prevalence": {n: (float(p / k) if k else None) for n, p, k in zip(label_names, n_pos, n_known)},
        "age": {"counts": hist.astype(int).tolist(), "unknown": int(len(df) - len(ages)),
                "mean": float(ages.mean()) if len(ages) else None},
        "sex": _counts(df["sex"]),
        "view": _counts(df["view"]),
    }


def _counts(col: pd.Series) -> dict:
    values = col.where(col.notna(), "unknown").astype(str)
    return {str(k): int(v) for k, v in values.value_counts().sort_index().items()}


def summarize(cache: Cache) -> dict:
    """Per split ("train", "val", "test", "all"): images, patients, per-finding positives / known / prevalence
    (positives over images whose label is known), age histogram (10-year bins), sex and view counts."""
    index = cache.index
    groups = {s: index[index["split"] == s] for s in SPLITS}
    groups["all"] = index
    return {
        "notice": RESEARCH_NOTICE,
        "cache": str(cache.path),
        "source": cache.manifest.get("source", {}).get("path"),
        "size": cache.size,
        "label_names": list(cache.label_names),
        "n_bad": int(cache.manifest.get("n_bad", 0)),
        "n_boxes": int(len(cache.boxes)),
        "age_bins": list(AGE_BINS),
        "splits": {g: _share(df, cache.label_names) for g, df in groups.items()},
    }


def render_table(summary: dict):
    """A rich Table: prevalence % (positives) of each finding in each split, with images/patients per split."""
    from rich.table import Table

    splits = summary["splits"]
    table = Table(title=f"{summary['cache']}  ({summary['size']} px)", caption=summary["notice"])
    table.add_column("finding")
    for g in GROUPS:
        table.add_column(f"{g}\n{splits[g]['images']} img / {splits[g]['patients']} pat", justify="right")
    for name in summary["label_names"]:
        cells = []
        for g in GROUPS:
            p = splits[g]["prevalence"][name]
            cells.append("-" if p is None else f"{100 * p:.1f}% ({splits[g]['positives'][name]})")
        table.add_row(name, *cells)
    for key in ("sex", "view"):
        table.add_row(key, *[", ".join(f"{k} {v}" for k, v in splits[g][key].items()) for g in GROUPS],
                      style="dim")
    table.add_row("mean age", *[("-" if splits[g]["age"]["mean"] is None else f"{splits[g]['age']['mean']:.1f}")
                                for g in GROUPS], style="dim")
    return table


def plot_summary(summary: dict, path: Path | str) -> Path:
    """PNG: prevalence per finding per split (bars) above age, sex and view panels."""
    from matplotlib.figure import Figure  # no pyplot: no global figure state, renders with Agg, works headless

    splits, names = summary["splits"], summary["label_names"]
    fig = Figure(figsize=(max(10, 0.8 * len(names)), 9), layout="constrained")
    grid = fig.add_gridspec(2, 3, height_ratios=(3, 2))
    ax = fig.add_subplot(grid[0, :])
    x, width = np.arange(len(names)), 0.8 / len(SPLITS)
    for k, s in enumerate(SPLITS):
        prev = [100 * (splits[s]["prevalence"][n] or 0.0) for n in names]
        ax.bar(x + (k - 1) * width, prev, width, label=f"{s} ({splits[s]['images']})")
    ax.set_xticks(x, names, rotation=40, ha="right")
    ax.set_ylabel("prevalence (%)")
    ax.set_title(f"{summary['cache']} - {summary['splits']['all']['images']} images")
    ax.legend()
    ax_age = fig.add_subplot(grid[1, 0])
    edges = summary["age_bins"]
    for s in SPLITS:
        ax_age.stairs(splits[s]["age"]["counts"], edges, label=s)
    ax_age.set_xlabel("age (years)")
    ax_age.set_ylabel("images")
    ax_age.legend()
    for col, key in ((1, "sex"), (2, "view")):
        axk = fig.add_subplot(grid[1, col])
        cats = sorted({c for s in SPLITS for c in splits[s][key]})
        xk = np.arange(len(cats))
        for k, s in enumerate(SPLITS):
            axk.bar(xk + (k - 1) * width, [splits[s][key].get(c, 0) for c in cats], width, label=s)
        axk.set_xticks(xk, cats)
        axk.set_title(key)
    fig.text(0.5, 0.001, summary["notice"], ha="center", va="bottom", fontsize=7)
    path = Path(path)
    fig.savefig(path, dpi=100)
    return path


def write_summary(cache: Cache, out_dir: Path | str | None = None) -> tuple[dict, Path, Path]:
    """Summarize ``cache`` and write ``summary.json`` + ``summary.png`` into ``out_dir`` (default: the cache)."""
    out_dir = Path(out_dir) if out_dir is not None else cache.path
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = summarize(cache)
    json_path = out_dir / "summary.json"
    json_path.write_text(json.dumps(summary, indent=2) + "\n")
    return summary, json_path, plot_summary(summary, out_dir / "summary.png")
