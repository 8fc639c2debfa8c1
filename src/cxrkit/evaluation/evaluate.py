"""`cxr evaluate`: predictions from a cache, metrics with patient-clustered CIs, subgroups, calibration, triage,
published / adjudicated comparisons, and the self-contained HTML report."""
from __future__ import annotations

import json
import math
import shlex
import time
from pathlib import Path
from typing import Any

import numpy as np

from cxrkit import RESEARCH_NOTICE, __version__
from cxrkit.data.errors import CxrError


class EvaluationError(CxrError):
    """The evaluation cannot run as asked (empty split, mismatched findings, missing validation data...)."""


def jsonable(obj: Any) -> Any:
    """Plain JSON types; NaN / inf become None so metrics.json stays valid JSON."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        return None if not math.isfinite(float(obj)) else float(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def _command(bundle, cache, split, out, n_boot, seed, val_split, calibrate, compare, adjudicated, triage) -> str:
    parts = ["cxr", "evaluate", str(bundle), str(cache), "--split", split, "--out", str(out), "--n-boot",
             str(n_boot), "--seed", str(seed)]
    if val_split != "val":
        parts += ["--val-split", val_split]
    if calibrate:
        parts += ["--calibrate", calibrate]
    if compare:
        parts += ["--compare", str(compare)]
    if adjudicated:
        parts += ["--adjudicated", str(adjudicated)]
    for k, v in (triage or {}).items():
        parts += [f"--triage-{k.replace('_', '-')}", str(v)]
    return shlex.join(parts)


def _data_info(cache, split, rows, val_rows) -> dict:
    manifest = getattr(cache, "manifest", {}) or {}
    idx = cache.index.iloc[rows]
    sources = sorted({str(s) for s in idx["source"].dropna().unique()}) if "source" in idx else []
    name = (manifest.get("source") or {}).get("name") if isinstance(manifest.get("source"), dict) else None
    all_sources = sources + ([str(name)] if name else [])
    return {"cache": str(getattr(cache, "path", "")), "source": name or ", ".join(sources) or "unknown",
            "sources": sources, "is_phantom": any("phantom" in s.lower() for s in all_sources), "split": split,
            "split_policy": (manifest.get("split") or {}).get("policy"), "n_images": int(len(rows)),
            "n_patients": int(idx["patient_id"].nunique()), "n_val_images": int(len(val_rows)),
            "content_hash": manifest.get("content_hash")}


def _optional(fn, what: str):
    """Run an optional section (explain's heatmaps / localisation); its failure becomes a stated reason."""
    try:
        return fn(), None
    except ImportError as exc:
        return None, f"{what} needs cxrkit.explain, which is not available ({exc})"
    except Exception as exc:  # noqa: BLE001 - a report section must not sink the whole evaluation
        return None, f"{what} failed: {type(exc).__name__}: {exc}"


def evaluate(bundle_or_predictor, cache, split: str = "test", out: str | Path | None = None, *, n_boot: int = 1000,
             seed: int = 0, val_split: str = "val", calibrate: str | None = None, compare=None,
             adjudicated: str | Path | None = None, triage: dict | None = None, heatmaps: bool = True,
             localisation: bool = True, gallery_k: int = 2, batch_size: int = 64, progress: bool = True,
             device: str = "cpu", command: str | None = None, tta: bool = False) -> dict:
    """Evaluate a bundle (path or loaded predictor) on ``split`` of ``cache`` (path or Cache).

    Writes ``out/metrics.json`` and ``out/report.html`` when ``out`` is given (plus ``out/predictions/*.npz``, which
    make a repeated or interrupted run resume without predicting again). ``calibrate`` ("temperature" /
    "isotonic") fits a calibration on ``val_split`` and stores it in the bundle's config.json. ``triage``: keyword
    arguments of :func:`cxrkit.evaluation.triage.simulate_worklist`. ``tta``: score each film as the mean over
    the zoom / shift views of :mod:`cxrkit.evaluation.tta` (no flip). Returns the metrics dict.
    """
    from cxrkit.bundle import load_bundle, read_bundle_config, write_bundle_config
    from cxrkit.bundle.calibration import apply_calibration
    from cxrkit.data import open_cache
    from cxrkit.evaluation.bootstrap import ClusterBootstrap
    from cxrkit.evaluation.calibration import calibration_summary, fit_calibration
    from cxrkit.evaluation.operating import choose_operating_points, operating_metrics
    from cxrkit.evaluation.predict import cached_predict
    from cxrkit.evaluation.published import published_comparison
    from cxrkit.evaluation.subgroups import subgroup_analysis
    from cxrkit.evaluation.summary import ranking_summary

    t0 = time.time()
    pred = load_bundle(bundle_or_predictor, device=device) if isinstance(bundle_or_predictor, (str, Path)) \
        else bundle_or_predictor
    if tta:
        from cxrkit.evaluation.tta import TTAPredictor

        pred = TTAPredictor(pred)
    cache_obj = open_cache(cache) if isinstance(cache, (str, Path)) else cache
    names = list(pred.label_names)
    missing = [n for n in names if n not in cache_obj.label_names]
    if missing:
        raise EvaluationError(f"the cache has no labels for {missing} (it has {list(cache_obj.label_names)}); "
                              "evaluate on a cache prepared with the findings the model predicts")
    col = [list(cache_obj.label_names).index(n) for n in names]
    rows = cache_obj.rows(split)
    if len(rows) == 0:
        raise EvaluationError(f"split {split!r} of the cache is empty; choose --split train, val, test or all")
    # 'all' contains the validation rows, so operating points fitted there would be judged on their own data:
    # the bundle's stored thresholds are used instead
    use_val = bool(val_split) and val_split != split and split != "all"
    val_rows = cache_obj.rows(val_split) if use_val else np.zeros(0, np.int64)
    out_dir = Path(out) if out is not None else None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    suffix = "_tta" if tta else ""  # TTA predictions are stored apart, never reused for a plain run
    store = (lambda tag: out_dir / "predictions" / f"{tag}{suffix}.npz") if out_dir is not None \
        else (lambda tag: None)
    kw = dict(batch_size=batch_size, progress=progress)
    test = cached_predict(pred, cache_obj, rows, store(split), desc=f"predict {split}", **kw)
    val = cached_predict(pred, cache_obj, val_rows, store(val_split), desc=f"predict {val_split}", **kw) \
        if len(val_rows) else None
    Y = cache_obj.labels(rows)[:, col].astype(np.float64)
    Yv = cache_obj.labels(val_rows)[:, col].astype(np.float64) if val is not None else None

    # -- calibration (fitted on validation, stored in the bundle) -----------------------------------------
    cal_cfg = pred.config.get("calibration")
    cal_note = None
    if calibrate:
        if val is None:
            why = ("--split all scores the validation rows too" if split == "all"
                   else f"split {val_split!r} is empty")
            raise EvaluationError(f"--calibrate needs a validation split apart from the scored rows, but {why}; "
                                  "calibrate on the development cache first, then score the external one")
        cal_cfg = fit_calibration(calibrate, val["logits"], Yv)
        pred.config["calibration"] = cal_cfg
        if getattr(pred, "path", None) is not None:
            cfg = read_bundle_config(pred.path)
            cfg["calibration"] = cal_cfg
            write_bundle_config(pred.path, cfg)
            cal_note = f"stored in {Path(pred.path) / 'config.json'}"
        else:
            cal_note = "applied in memory (the predictor has no bundle path to store it in)"
    P = apply_calibration(test["logits"], cal_cfg).astype(np.float64)
    Pv = apply_calibration(val["logits"], cal_cfg).astype(np.float64) if val is not None else None
    has_head = bool((pred.config.get("model") or {}).get("normal_head"))
    abn = test["abnormality"].astype(np.float64) if has_head or cal_cfg is None else P.max(axis=1)

    # -- discrimination, operating points, calibration -----------------------------------------------------
    patients = cache_obj.index["patient_id"].to_numpy().astype(str)[rows]
    boot = ClusterBootstrap.draw(patients, n_boot, seed)
    summary, reps = ranking_summary(Y, P, names, boot)
    if val is not None:
        thresholds, thr_source = choose_operating_points(Yv, Pv, names), f"{val_split} split"
    else:
        thresholds = {n: {"bundle": float(t)} for n, t in zip(names, pred.thresholds)}
        thr_source = "bundle thresholds (no validation split)"
    op = operating_metrics(Y, P, names, thresholds, boot)
    for n in names:
        summary["per_class"][n]["operating_points"] = op[n]
    calib = calibration_summary(Y, P, names)
    calib.update(method=(cal_cfg or {}).get("method"), note=cal_note)
    if val is not None:
        calib["validation_mean_ece"] = calibration_summary(Yv, Pv, names)["mean_ece"]

    sub_thr = thresholds if val is not None else {n: {"youden": thresholds[n]["bundle"]} for n in names}
    meta = cache_obj.index.iloc[rows].reset_index(drop=True)
    subgroups = subgroup_analysis(Y, P, meta, patients, names, sub_thr, boot, summary, reps)
    if val is None:
        subgroups["thresholds"] = "bundle thresholds"

    # -- triage --------------------------------------------------------------------------------------------
    from cxrkit.evaluation.triage import simulate_worklist, triage_figure

    abnormal = (np.nan_to_num(Y, nan=0.0) >= 0.5).any(axis=1)
    abn_sum, _ = ranking_summary(abnormal[:, None].astype(np.float64), abn[:, None], ["abnormal"], boot)
    tri = {"abnormality": {**{k: v for k, v in abn_sum["per_class"]["abnormal"].items()},
                           "score": "dedicated normal/abnormal head" if has_head
                           else "maximum of the finding probabilities",
                           "n_abnormal": int(abnormal.sum()), "n_normal": int((~abnormal).sum())}}
    triage_png = None
    tri_params = {"seed": seed, **(triage or {})}
    if abnormal.any():
        sim = simulate_worklist(abn, abnormal, **tri_params)
        tri["simulation"] = sim.to_dict()
        triage_png = triage_figure(sim, out_dir / "triage.png" if out_dir is not None else None)
    else:
        tri["simulation"] = None
        tri["reason"] = "no abnormal image in the split: nothing to prioritise"

    # -- comparisons -----------------------------------------------------------------------------------------
    data = _data_info(cache_obj, split, rows, val_rows)
    published = published_comparison(summary["per_class"], names, data_source=data["source"] +
                                      (" phantom" if data["is_phantom"] else ""),
                                      split_id=f"cxrkit-{data['split_policy'] or 'unknown'}")
    comparison = None
    if compare is not None:
        from cxrkit.evaluation.compare import compare_models

        other = load_bundle(compare, device=device) if isinstance(compare, (str, Path)) else compare
        if list(other.label_names) != names:
            raise EvaluationError(f"--compare bundle predicts {list(other.label_names)}, the evaluated one {names}: "
                                  "compare models with the same findings")
        o = cached_predict(other, cache_obj, rows, store(f"{split}-compare"), desc="predict compare", **kw)
        Pb = apply_calibration(o["logits"], other.config.get("calibration")).astype(np.float64)
        sum_b, reps_b = ranking_summary(Y, Pb, names, boot)
        comparison = compare_models(Y, P, Pb, names, summary, sum_b, reps, reps_b)
        comparison["other"] = str(getattr(other, "path", compare))
        comparison["other_mean_auroc"] = {k: sum_b[k] for k in ("mean_auroc", "mean_auroc_ci_low",
                                                                 "mean_auroc_ci_high")}
    adj = None
    if adjudicated is not None:
        from cxrkit.evaluation.adjudicated import adjudicated_metrics, load_adjudicated

        image_ids = cache_obj.index["image_id"].to_numpy().astype(str)[rows]
        adj = adjudicated_metrics(image_ids, patients, P, names, load_adjudicated(adjudicated), n_boot=n_boot,
                                  seed=seed)

    # -- explain: localisation and heatmap gallery (optional dependency, checked at run time) ---------------
    loc = {"reason": "not requested"}
    boxes = getattr(cache_obj, "boxes", None)
    if localisation:
        if boxes is None or not len(boxes) or not np.isin(boxes["row"].to_numpy(), rows).any():
            loc = {"reason": f"no ground-truth boxes in the {split} split"}
        else:
            def _loc():
                from cxrkit.explain import evaluate_localisation
                from cxrkit.explain.cam import concrete_method
                from cxrkit.explain.finding_boxes import box_params

                method = concrete_method(pred)  # the bundle's tuned map method, else CAM / attention
                tuned = any(box_params(pred, n, method)[1] for n in pred.label_names)
                return {**evaluate_localisation(pred, cache_obj, rows, method, progress=progress),
                        "method": method, "box_params": "tuned (cxr tune-boxes)" if tuned else "defaults"}
            res, why = _optional(_loc, "localisation")
            loc = res if res is not None else {"reason": why}
    gallery: list | str = "not requested"
    if heatmaps:
        def _gal():
            from cxrkit.explain import gallery as make_gallery
            return make_gallery(pred, cache_obj, rows, P.astype(np.float32), Y, k=gallery_k)
        res, why = _optional(_gal, "heatmaps")
        gallery = res if res is not None else why

    cmd = command or _command(getattr(pred, "path", None) or bundle_or_predictor, getattr(cache_obj, "path", cache),
                              split, out_dir or "OUT", n_boot, seed, val_split, calibrate,
                              getattr(compare, "path", compare), adjudicated, triage)
    model = pred.config.get("model") or {}
    from cxrkit.bundle.synthetic import trained_on_synthetic

    metrics = {
        "notice": RESEARCH_NOTICE, "cxrkit_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "command": cmd,
        "label_names": names, "split": split, "tta": bool(tta),
        "bootstrap": {"n_boot": n_boot, "seed": seed, "unit": "patient", "interval": "percentile 95%"},
        "bundle": {"path": str(getattr(pred, "path", "")), "arch": model.get("arch"),
                   "ensemble": pred.config.get("ensemble"), "thresholds_source": thr_source,
                   "trained_on_synthetic": trained_on_synthetic(pred.config)},
        "data": data,
        **summary,
        "calibration": calib, "subgroups": subgroups, "triage": tri, "published": published,
        "adjudicated": adj, "comparison": comparison, "localisation": loc,
        "heatmaps": "available" if isinstance(gallery, list) else f"heatmaps unavailable: {gallery}",
        "elapsed_s": None,
    }
    metrics["elapsed_s"] = round(time.time() - t0, 2)
    metrics = jsonable(metrics)
    if out_dir is not None:
        from cxrkit.evaluation.report import render_report
        from cxrkit.evaluation.report.figures import forest_figure, reliability_figure, roc_pr_figures

        roc, pr = roc_pr_figures(Y, P, names, boot)
        figs = {"roc": roc, "pr": pr, "reliability": reliability_figure(calib, names),
                "forest_auroc": forest_figure(subgroups, metrics["mean_auroc"]),
                "forest_underdiagnosis": forest_figure(subgroups, subgroups["overall_underdiagnosis"]
                                                       ["underdiagnosis_rate"], key="underdiagnosis_rate",
                                                       xlabel="underdiagnosis rate"),
                "triage": triage_png}
        (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=1, allow_nan=False))
        (out_dir / "report.html").write_text(render_report(metrics, figs, gallery, cmd), encoding="utf-8")
    return metrics
