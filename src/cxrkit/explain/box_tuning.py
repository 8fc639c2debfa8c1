"""Fitting each finding's box parameters on validation boxes (``cxr tune-boxes``) and the before/after table
(``cxr localise``).

For every map method, the validation pairs' maps are made once; then every (threshold, minimum area, number of
boxes) of a small grid is scored with the ChestX-ray8 criterion, a ground-truth box found when a detected box
reaches IoBB >= 0.5, finding by finding. The best per finding (ties: the better mean best IoU, i.e. boxes that
fit, then fewer boxes) goes into the bundle; the method with the best pooled validation accuracy becomes the
bundle's map method, which every output then uses. With ``per_finding``, each finding may also keep the method
that localised it best (``per-finding``: e.g. a finer LayerCAM for small nodules, CAM-LayerCAM for a lobe); that
combination becomes the map method when its pooled validation accuracy beats every single method's.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import numpy as np

from cxrkit.explain.boxes import ExplainError
from cxrkit.explain.finding_boxes import BoxParams, boxes_with
from cxrkit.explain.localisation import best_overlaps

THRESHOLDS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
MIN_AREA_FRACS = (0.0, 0.001, 0.005, 0.01, 0.02)
MAX_BOXES = (1, 2, 3)
CRITERION = 0.5  # T(IoBB)
TUNE_METHODS = ("cam", "layercam", "layercam-x4", "layercam-x8", "cam-layercam")


def _grid_scores(pairs, grouped, maps) -> dict[tuple, tuple[np.ndarray, np.ndarray]]:
    """(threshold, min_area_frac, max_boxes) -> (per-box best IoBB, per-box best IoU), boxes in pair order."""
    out = {}
    for t in THRESHOLDS:
        for a in MIN_AREA_FRACS:
            found = [boxes_with(m, BoxParams(t, a, max(MAX_BOXES))) for m in maps]
            for k in MAX_BOXES:
                iobbs, ious = [], []
                for (row, label), boxes in zip(pairs, found):
                    for truth in grouped[(row, label)]:
                        b_iou, b_iobb = best_overlaps(truth, boxes[:k])
                        iobbs.append(b_iobb)
                        ious.append(b_iou)
                out[(t, a, k)] = (np.asarray(iobbs), np.asarray(ious))
    return out


def fit_params(pairs, grouped, maps) -> dict[str, dict]:
    """Per finding: the grid point with the best accuracy at T(IoBB)=0.5 -> ``{"threshold", "min_area_frac",
    "max_boxes", "val_acc", "val_acc_default", "n_boxes"}``."""
    labels = np.asarray([label for (row, label) in pairs for _ in grouped[(row, label)]])
    scores = _grid_scores(pairs, grouped, maps)
    default = BoxParams()
    default_key = (default.threshold, default.min_area_frac, default.max_boxes)
    out = {}
    for label in dict.fromkeys(labels):
        sel = labels == label
        ranked = sorted(scores, key=lambda key: (-(scores[key][0][sel] >= CRITERION).mean(),
                                                 -scores[key][1][sel].mean(), key[2], key[0]))
        t, a, k = ranked[0]
        out[str(label)] = {"threshold": t, "min_area_frac": a, "max_boxes": k,
                           "val_acc": float((scores[ranked[0]][0][sel] >= CRITERION).mean()),
                           "val_acc_default": float((scores[default_key][0][sel] >= CRITERION).mean())
                           if default_key in scores else None,
                           "n_boxes": int(sel.sum())}
    return out


def choose_per_finding(fitted: dict[str, dict[str, dict]], overall: dict[str, float]) -> dict:
    """Each finding's method: the best validation accuracy among the tuned methods, ties going to the best single
    method overall (so a finding only leaves it for a strict gain) -> ``{"methods": {finding: method}, "default":
    the best single method, "val_acc", "val_acc_default"}`` (pooled over the findings' boxes)."""
    default = max(overall, key=overall.get)
    order = [default] + [m for m in fitted if m != default]
    chosen, hits, hits_default, n = {}, 0.0, 0.0, 0
    for finding in fitted[default]:
        best = max(order, key=lambda m: (fitted[m][finding]["val_acc"], m == default))
        chosen[finding] = best
        p = fitted[best][finding]
        hits += p["val_acc"] * p["n_boxes"]
        hits_default += (p["val_acc_default"] or 0) * p["n_boxes"]
        n += p["n_boxes"]
    return {"methods": chosen, "default": default, "val_acc": hits / n, "val_acc_default": hits_default / n}


def tune_boxes(predictor, cache, rows, methods: Sequence[str] | None = None, batch_size: int = 16,
               progress: bool = True, per_finding: bool = True) -> dict:
    """``{"methods": {method: {finding: params + val accuracies}}, "overall": {method: pooled val accuracy},
    "method": the best method}`` on the cache rows' ground-truth boxes; with ``per_finding`` and more than one
    method, also ``"per_finding"`` (:func:`choose_per_finding`) and its pooled accuracy as ``overall["per-finding"]``,
    which wins "method" only when strictly better than every single method. ``methods`` None: :data:`TUNE_METHODS`,
    skipping (in ``"skipped"``) the LayerCAM stages the model has no layer for; methods given must all work."""
    from cxrkit.explain.cam import concrete_method
    from cxrkit.explain.finding_boxes import PER_FINDING
    from cxrkit.explain.localisation import boxed_pairs, pair_maps

    optional = () if methods is not None else TUNE_METHODS[1:]  # CAM, first, always works on a cxrkit head
    methods = TUNE_METHODS if methods is None else methods

    pairs, grouped, _ = boxed_pairs(predictor, cache, rows)
    if not len(pairs):
        raise ExplainError("no ground-truth boxes in these rows for this model's findings; tune on a split with "
                           "boxes (the phantom set has them, NIH only in BBox_List_2017)")
    result: dict = {"methods": {}, "overall": {}, "overall_default": {}, "seconds": {}, "skipped": {}}
    for method in methods:
        concrete = concrete_method(predictor, method)
        t0 = time.perf_counter()
        try:
            maps = pair_maps(predictor, cache, pairs, concrete, batch_size, progress, desc=f"maps {concrete}")
        except ExplainError as exc:
            # the default list names stages some models lack (layercam-x8 on a net with no stride-4 layer)
            if method not in optional:
                raise
            result["skipped"][concrete] = str(exc)
            continue
        result["seconds"][concrete] = round(time.perf_counter() - t0, 1)
        fitted = fit_params(pairs, grouped, maps)
        n = sum(p["n_boxes"] for p in fitted.values())
        result["methods"][concrete] = fitted
        result["overall"][concrete] = sum(p["val_acc"] * p["n_boxes"] for p in fitted.values()) / n
        result["overall_default"][concrete] = sum((p["val_acc_default"] or 0) * p["n_boxes"]
                                                  for p in fitted.values()) / n
    result["method"] = max(result["overall"], key=result["overall"].get)
    if per_finding and len(result["methods"]) > 1:
        chosen = choose_per_finding(result["methods"], result["overall"])
        result["per_finding"] = {"methods": chosen["methods"], "default": chosen["default"]}
        result["overall"][PER_FINDING] = chosen["val_acc"]
        result["overall_default"][PER_FINDING] = chosen["val_acc_default"]
        result["seconds"][PER_FINDING] = sum(result["seconds"][m] for m in set(chosen["methods"].values()))
        if chosen["val_acc"] > result["overall"][result["method"]]:
            result["method"] = PER_FINDING
    result["n_boxes"] = int(sum(len(v) for v in grouped.values()))
    return result


def store_tuning(bundle_dir: str | Path, result: dict, split: str, set_method: bool = True) -> Path:
    """Write the fitted parameters into the bundle's config.json (``explain.boxes``, ``explain.box_tuning`` and,
    with ``set_method``, ``explain.method``), keeping parameters of methods not tuned this time."""
    from cxrkit.bundle.format import read_bundle_config, write_bundle_config

    config = read_bundle_config(bundle_dir)
    explain = dict(config.get("explain") or {})
    boxes = dict(explain.get("boxes") or {})
    for method, fitted in result["methods"].items():
        boxes[method] = {f: {k: p[k] for k in ("threshold", "min_area_frac", "max_boxes")}
                         for f, p in fitted.items()}
    explain["boxes"] = boxes
    if result.get("per_finding"):
        explain["per_finding"] = result["per_finding"]
    if set_method:
        explain["method"] = result["method"]
    explain["box_tuning"] = {"split": split, "criterion": f"acc_iobb@{CRITERION:g}", "n_boxes": result["n_boxes"],
                             "val_overall": result["overall"], "val_overall_default": result["overall_default"],
                             "grid": {"threshold": list(THRESHOLDS), "min_area_frac": list(MIN_AREA_FRACS),
                                      "max_boxes": list(MAX_BOXES)},
                             "tuned": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    config["explain"] = explain
    write_bundle_config(bundle_dir, config)
    return Path(bundle_dir) / "config.json"


def localisation_table(predictor, cache, rows, methods: Sequence[str] = TUNE_METHODS, batch_size: int = 16,
                       progress: bool = True) -> dict:
    """Per method: the accuracy table with the fixed rule of the paper ("fixed": 0.5 x peak, every region of at
    least 16 px), the default parameters ("default") and the bundle's tuned ones ("tuned", when it has them),
    plus the explanation cost (seconds per map on this machine)."""
    from cxrkit.explain.cam import concrete_method
    from cxrkit.explain.finding_boxes import box_params
    from cxrkit.explain.localisation import boxed_pairs, evaluate_localisation, pair_maps

    pairs, _, _ = boxed_pairs(predictor, cache, rows)
    if not len(pairs):
        raise ExplainError("no ground-truth boxes in these rows for this model's findings; use a split with boxes")
    out: dict = {"n_pairs": int(len(pairs)), "methods": {}}
    for method in methods:
        concrete = concrete_method(predictor, method)
        pair_maps(predictor, cache, pairs[:1], concrete, 1, False)  # warm-up: imports, the layer search
        t0 = time.perf_counter()
        maps = pair_maps(predictor, cache, pairs, concrete, batch_size, progress, desc=f"maps {concrete}")
        seconds = time.perf_counter() - t0
        entry = {"ms_per_map": round(1000 * seconds / len(pairs), 2),
                 "fixed": evaluate_localisation(predictor, cache, rows, concrete, box_threshold=0.5, min_area=16,
                                                maps=maps, progress=False),
                 "default": evaluate_localisation(predictor, cache, rows, concrete, box_params=BoxParams(),
                                                  maps=maps, progress=False)}
        if any(box_params(predictor, n, concrete)[1] for n in predictor.label_names):
            entry["tuned"] = evaluate_localisation(predictor, cache, rows, concrete, maps=maps, progress=False)
        out["methods"][concrete] = entry
    return out
