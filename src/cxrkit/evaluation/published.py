"""The published per-class AUROCs (Wang et al. 2017; CheXNet 2017) next to this evaluation, with comparability
stated: numbers from different test images are context, not a benchmark result."""
from __future__ import annotations

import json
from importlib import resources
from typing import Sequence


def load_published() -> dict:
    """The bundled table (published_auroc.json): {"note", "studies": {id: {name, citation, split, split_id, auroc}}}."""
    return json.loads(resources.files("cxrkit.evaluation").joinpath("published_auroc.json").read_text())


def published_comparison(per_class: dict, label_names: Sequence[str], *, data_source: str | None,
                         split_id: str | None = None) -> dict:
    """Rows {finding, ours, <study>: value, <study>_diff} plus per-study comparability and the reason.

    A study is comparable only when the evaluated test split is the study's own (``split_id`` equal to the study's
    ``split_id``); phantom (synthetic) data is never comparable.
    """
    table = load_published()
    studies = {}
    for sid, st in table["studies"].items():
        if data_source and "phantom" in str(data_source).lower():
            comparable, reason = False, "synthetic (phantom) data - never comparable with published results"
        elif split_id is not None and split_id == st["split_id"]:
            comparable, reason = True, "same test split"
        else:
            comparable, reason = False, (f"different test images: this evaluation uses split {split_id or 'unknown'}"
                                         f", the study used {st['split']}")
        studies[sid] = {k: st[k] for k in ("name", "citation", "split")} | {"comparable": comparable,
                                                                               "reason": reason}
    rows = []
    for name in label_names:
        ours = per_class.get(name, {}).get("auroc")
        row = {"finding": name, "ours": ours}
        for sid, st in table["studies"].items():
            v = st["auroc"].get(name)
            row[sid] = v
            # no difference against a study that used other images (or against synthetic data)
            row[f"{sid}_diff"] = None if v is None or ours is None or not studies[sid]["comparable"] else ours - v
        rows.append(row)
    return {"note": table["note"], "studies": studies, "rows": rows}
