"""The per-finding localisation table at T(IoBB)=0.5 (before/after, each method) as Markdown, rows and a figure."""
from __future__ import annotations

from pathlib import Path

from cxrkit.explain.localisation import ALL

VARIANTS = (("fixed", "fixed 0.5"), ("default", "defaults"), ("tuned", "tuned"))


def columns(result: dict) -> list[tuple[str, str, str]]:
    """(method, variant, header) of every column the result has."""
    return [(m, v, f"{m} {label}") for m, entry in result["methods"].items() for v, label in VARIANTS if v in entry]


def table_rows(result: dict, t: float = 0.5) -> tuple[list[str], list[list]]:
    """Header and rows (finding, boxes, one accuracy per column); the pooled row last."""
    cols = columns(result)
    key = f"acc_iobb@{t:g}"
    first = next(iter(result["methods"].values()))["fixed"]
    findings = [n for n in first if n != ALL] + [ALL]
    rows = []
    for n in findings:
        rows.append([n, first[n]["n_boxes"], *(result["methods"][m][v].get(n, {}).get(key) for m, v, _ in cols)])
    cost = ["ms per map", "", *(result["methods"][m]["ms_per_map"] if v == "fixed" else "" for m, v, _ in cols)]
    return ["finding", "boxes", *(h for _, _, h in cols)], rows + [cost]


def markdown(result: dict, t: float = 0.5) -> str:
    head, rows = table_rows(result, t)

    def cell(v):
        return f"{v:.2f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def figure(result: dict, path: str | Path, t: float = 0.5) -> Path:
    """Grouped bars: accuracy at T(IoBB)=t per finding, one bar per (method, variant): one hue per method, lighter
    to darker for the paper's fixed rule, the default box parameters and the tuned ones (a default colour cycle
    repeats after 10 bars, and 5 methods x 3 rules are 15); the legend sits under the axes, off the bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    head, rows = table_rows(result, t)
    rows = rows[:-1]
    cols = columns(result)
    methods = list(dict.fromkeys(m for m, _, _ in cols))
    hues = plt.get_cmap("tab10")
    shade = {v: k for k, (v, _) in enumerate(VARIANTS)}
    x = np.arange(len(rows))
    width = 0.8 / max(1, len(cols))
    fig, ax = plt.subplots(figsize=(max(8, len(rows) * 0.9), 5.2))
    for j, (m, v, name) in enumerate(cols):
        base = np.asarray(hues(methods.index(m) % 10)[:3])
        colour = base + (1 - base) * (0.6 - 0.3 * shade[v])  # fixed lightest, tuned full colour
        ax.bar(x + (j - (len(cols) - 1) / 2) * width, [r[2 + j] or 0 for r in rows], width, label=name,
               color=colour, edgecolor="black" if v == "tuned" else "none", linewidth=0.3)
    ax.set_xticks(x, [r[0] for r in rows], rotation=40, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel(f"accuracy at T(IoBB)={t:g}")
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.legend(fontsize=7, ncol=max(1, min(len(methods), 5)),  # a column per method, a row per rule
              loc="upper center", bbox_to_anchor=(0.5, -0.3), frameon=False)
    ax.set_title("Localisation (ChestX-ray8 protocol) - research use only")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
