"""Compact NIH ChestX-ray14 population statistics that drive the phantom's patients and labels.

``stats.json`` (shipped in this package, a few tens of KB) is built once from the real NIH table by
``tools/build_phantom_stats.py`` with :func:`build_stats`; at run time the phantom only reads the shipped JSON
(:func:`load_stats`), never the real data.
"""
from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np

from cxrkit.data.errors import CxrError
from cxrkit.data.labels import NIH_FINDINGS

STATS_FILE = "stats.json"
NO_FINDING = "No Finding"
AGE_BIN = 5
AGE_MAX = 100
TOP_COMBOS = 300       # the most frequent label sets: ~99% of NIH images
TOP_PER_FINDING = 6    # plus each finding's most frequent sets, so rare findings (Hernia) keep several shapes


class PhantomStatsError(CxrError):
    """The phantom statistics are missing, malformed, or cannot be built from the given table."""


def build_stats(table) -> dict:
    """Summarise an NIH ``Data_Entry_2017`` table (path or DataFrame) into the phantom's statistics dict."""
    import pandas as pd

    df = table if isinstance(table, pd.DataFrame) else pd.read_csv(table)
    need = ("Finding Labels", "Patient ID", "Follow-up #", "Patient Age", "Patient Gender", "View Position")
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise PhantomStatsError(f"NIH table lacks columns {missing}; pass Data_Entry_2017_v2020.csv")
    df = df.sort_values(["Patient ID", "Follow-up #"]).reset_index(drop=True)
    labels = df["Finding Labels"].astype(str).map(_canonical_combo)
    n = len(df)
    counts = labels.value_counts()

    prevalence = {f: float(labels.map(lambda s, f=f: f in s.split("|")).mean()) for f in NIH_FINDINGS}
    keep = list(counts.index[:TOP_COMBOS])
    for f in NIH_FINDINGS:
        with_f = [c for c in counts.index if f in c.split("|")]
        keep += [c for c in with_f[:TOP_PER_FINDING] if c not in keep]
    combos = [[c, int(counts[c])] for c in keep]

    ipp = df.groupby("Patient ID").size().value_counts().sort_index()
    ages = pd.to_numeric(df["Patient Age"], errors="coerce")
    first = df.groupby("Patient ID").head(1)
    age_hist = {}
    for sex in ("M", "F"):
        a = pd.to_numeric(first.loc[first["Patient Gender"] == sex, "Patient Age"], errors="coerce").dropna()
        a = a[(a >= 0) & (a < AGE_MAX)]
        age_hist[sex] = np.histogram(a, bins=np.arange(0, AGE_MAX + AGE_BIN, AGE_BIN))[0].tolist()

    # consecutive follow-ups of one patient: how often labels / view repeat and how fast age grows
    same_patient = (df["Patient ID"].to_numpy()[1:] == df["Patient ID"].to_numpy()[:-1])
    lab = labels.to_numpy()
    view = df["View Position"].astype(str).to_numpy()
    same_labels = float((lab[1:] == lab[:-1])[same_patient].mean())
    same_view = float((view[1:] == view[:-1])[same_patient].mean())
    step = np.diff(ages.to_numpy(dtype=float))[same_patient]
    step = step[np.isfinite(step) & (step >= 0) & (step <= 5)]
    pi2 = float(((counts.to_numpy() / n) ** 2).sum())  # chance that two independent films share a label set
    ap = view == "AP"
    healthy = lab == NO_FINDING
    return {
        "source": "NIH ChestX-ray14 Data_Entry_2017_v2020.csv (Wang et al., CVPR 2017)",
        "builder": "tools/build_phantom_stats.py",
        "n_images": int(n),
        "n_patients": int(df["Patient ID"].nunique()),
        "findings": list(NIH_FINDINGS),
        "prevalence": {k: round(v, 6) for k, v in prevalence.items()},
        "no_finding": round(float(healthy.mean()), 6),
        "combos": combos,
        "combos_coverage": round(sum(c for _, c in combos) / n, 6),
        "images_per_patient": [[int(k), int(v)] for k, v in ipp.items()],
        "age_bin_years": AGE_BIN,
        "age_hist": age_hist,
        "sex_male": round(float((df["Patient Gender"] == "M").mean()), 6),
        "view_ap": round(float(ap.mean()), 6),
        "view_ap_no_finding": round(float(ap[healthy].mean()), 6),
        "view_ap_finding": round(float(ap[~healthy].mean()), 6),
        "followup_same_labels": round(same_labels, 6),
        # P(label set repeats) = rho + (1 - rho) * sum(pi^2) for a keep-or-redraw chain; solve for rho
        "followup_label_persistence": round(max(0.0, (same_labels - pi2) / (1 - pi2)), 6),
        "followup_same_view": round(same_view, 6),
        "followup_age_step": round(float(step.mean()) if step.size else 0.0, 6),
    }


def _canonical_combo(s: str) -> str:
    parts = [p.strip() for p in str(s).split("|") if p.strip()]
    parts = [p for p in parts if p != NO_FINDING]
    order = {f: i for i, f in enumerate(NIH_FINDINGS)}
    unknown = [p for p in parts if p not in order]
    if unknown:
        raise PhantomStatsError(f"unknown NIH finding names {unknown} in 'Finding Labels'")
    return "|".join(sorted(parts, key=order.__getitem__)) or NO_FINDING


def write_stats(stats: dict, path: Path | str) -> Path:
    """Write ``stats`` as compact, stable JSON (sorted keys, one combo per line for readable diffs)."""
    path = Path(path)
    lines = []
    for key in sorted(stats):
        value = stats[key]
        if isinstance(value, list) and value and isinstance(value[0], list):
            inner = ",\n  ".join(json.dumps(v) for v in value)
            lines.append(f"{json.dumps(key)}: [\n  {inner}\n ]")
        else:
            lines.append(f"{json.dumps(key)}: {json.dumps(value, sort_keys=True)}")
    path.write_text("{\n " + ",\n ".join(lines) + "\n}\n", encoding="utf-8")
    return path


@lru_cache(maxsize=1)
def _shipped_text() -> str:
    try:
        return resources.files("cxrkit.data.phantom").joinpath(STATS_FILE).read_text(encoding="utf-8")
    except (FileNotFoundError, OSError) as exc:
        raise PhantomStatsError(f"the packaged phantom statistics {STATS_FILE} are missing ({exc}); reinstall "
                                "cxrkit or rebuild them with tools/build_phantom_stats.py") from exc


def load_stats() -> dict:
    """The shipped NIH statistics (a fresh dict each call, so callers may modify it)."""
    stats = json.loads(_shipped_text())
    missing = {"findings", "combos", "images_per_patient", "age_hist", "sex_male", "view_ap"} - set(stats)
    if missing or list(stats["findings"]) != list(NIH_FINDINGS):
        raise PhantomStatsError(f"phantom statistics lack {sorted(missing)} or list other findings; rebuild them "
                                "with tools/build_phantom_stats.py")
    return stats


def combo_table(stats: dict) -> tuple[list[tuple[str, ...]], np.ndarray]:
    """The label sets (tuples of finding names, () = No Finding) and their real frequencies (summing to 1)."""
    sets = [() if c == NO_FINDING else tuple(c.split("|")) for c, _ in stats["combos"]]
    w = np.asarray([n for _, n in stats["combos"]], dtype=np.float64)
    return sets, w / w.sum()


def enrich_weights(sets, weights: np.ndarray, enrich: float, iters: int = 500) -> np.ndarray:
    """Re-weight label sets so every finding reaches prevalence >= ``enrich`` (0 leaves the real table).

    Raking: the sets holding an under-represented finding are scaled up until it reaches the floor; co-occurrence
    inside each set is kept, so enriched findings still bring their real companions along.
    """
    if not 0 <= enrich <= 0.3:
        raise PhantomStatsError(f"enrich={enrich!r} must be in [0, 0.3] (a minimum prevalence per finding)")
    w = np.asarray(weights, dtype=np.float64).copy()
    if enrich == 0:
        return w / w.sum()
    member = np.array([[f in s for s in sets] for f in NIH_FINDINGS], dtype=bool)  # (14, n_sets)
    if not member.any(axis=1).all():
        raise PhantomStatsError("some finding has no label set in the statistics; rebuild stats.json")
    for _ in range(iters):
        w /= w.sum()
        prev = member @ w
        low = prev < enrich * 0.999
        if not low.any():
            break
        for f in np.flatnonzero(low):
            w[member[f]] *= (enrich / prev[f]) ** 0.7
    return w / w.sum()
