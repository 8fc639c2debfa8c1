"""One self-contained HTML file (valid HTML5, inline CSS, figures as base64 PNG): opens offline, no JS, no CDN."""
from __future__ import annotations

import base64
from html import escape
from typing import Sequence

from cxrkit import RESEARCH_NOTICE
from cxrkit.bundle.synthetic import SYNTHETIC_WARNING
from cxrkit.evaluation.operating import POLICY_TITLES

PHANTOM_WARNING = "synthetic data — not clinical performance"
CSS = """body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:1200px;margin:1.5em auto;
padding:0 1em;color:#222}h1{font-size:1.5em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}th,td{border:1px solid #ccc;padding:.25em .5em;
text-align:right;white-space:nowrap}th{background:#f3f3f3;white-space:normal;vertical-align:bottom}
td.l,th.l{text-align:left}.tw{max-width:100%;overflow-x:auto}.legend{font-size:.85em}
.sw{display:inline-block;width:1.6em;height:.9em;border:2px solid;vertical-align:middle;background:#4a6fa5}
.notice{background:#fff4e5;border:1px solid #f0a040;padding:.6em 1em}
.warn{background:#fde8e8;border:2px solid #c33;padding:.6em 1em;font-weight:bold;font-size:1.1em}
code,pre{background:#f6f6f6;padding:.1em .3em}pre{padding:.6em;overflow-x:auto;white-space:pre-wrap}
img{max-width:100%;height:auto}.gallery{display:flex;flex-wrap:wrap;gap:8px}.gallery figure{margin:0;width:230px}
figcaption{font-size:.75em}"""


def fmt(v, digits: int = 3) -> str:
    """A number for the report ("n/a" when undefined)."""
    if v is None or (isinstance(v, float) and v != v):
        return "n/a"
    if isinstance(v, (int,)) and not isinstance(v, bool):
        return str(v)
    return f"{float(v):.{digits}f}"


def with_ci(entry: dict, key: str, digits: int = 3) -> str:
    v = entry.get(key)
    if v is None:
        return "n/a"
    lo, hi = entry.get(f"{key}_ci_low"), entry.get(f"{key}_ci_high")
    if lo is None or hi is None:
        return fmt(v, digits)
    return f"{fmt(v, digits)} ({ci_range(lo, hi, digits)})"


def ci_range(lo, hi, digits: int = 3) -> str:
    """``lo to hi``: a dash between two numbers that may be negative reads as a minus sign ("-0.08--0.03")."""
    return f"{fmt(lo, digits)} to {fmt(hi, digits)}"


def img(png: bytes | None, alt: str) -> str:
    if not png:
        return f"<p>{escape(alt)}: figure unavailable</p>"
    return f'<img src="data:image/png;base64,{base64.b64encode(png).decode()}" alt="{escape(alt)}">'


def table(header: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> str:
    """HTML table; the first ``left`` columns are left-aligned. Cells are escaped."""
    h = "".join(f'<th class="l">{escape(x)}</th>' if i < left else f"<th>{escape(x)}</th>"
                for i, x in enumerate(header))
    body = "".join("<tr>" + "".join(f'<td class="l">{escape(str(c))}</td>' if i < left else f"<td>{escape(str(c))}</td>"
                                    for i, c in enumerate(r)) + "</tr>" for r in rows)
    # wide tables scroll inside their own box instead of widening the page
    return f'<div class="tw"><table><thead><tr>{h}</tr></thead><tbody>{body}</tbody></table></div>'


def _per_class(m: dict) -> str:
    cal = m.get("calibration", {}).get("per_class", {})
    rows = []
    for name, e in m["per_class"].items():
        rows.append([name, e["n_pos"], e["n_neg"], with_ci(e, "auroc"), with_ci(e, "auprc"),
                     fmt(cal.get(name, {}).get("ece")), e.get("reason", "")])
    return table(["finding", "positives", "negatives", "AUROC (95% CI)", "AUPRC (95% CI)", "ECE", "note"], rows)


def _operating(m: dict) -> str:
    rows = []
    for name, pc in m["per_class"].items():
        for p, e in pc.get("operating_points", {}).items():
            if e.get("threshold") is None:
                rows.append([name, POLICY_TITLES.get(p, p), "n/a", "", "", "", "", "", e.get("reason", "")])
                continue
            rows.append([name, POLICY_TITLES.get(p, p), fmt(e["threshold"], 4)] +
                        [with_ci(e, k) for k in ("sensitivity", "specificity", "ppv", "npv", "f1")] + [""])
    return table(["finding", "operating point (chosen on validation)", "threshold", "sensitivity", "specificity",
                  "PPV", "NPV", "F1", "note"], rows, left=2)


def _subgroups(sg: dict) -> str:
    if not sg:
        return "<p>Subgroup analysis not run.</p>"
    parts = [f"<p>Underdiagnosis rate overall (predicted no finding although at least one finding is labelled; "
             f"thresholds: {escape(sg.get('thresholds', ''))}): "
             f"{escape(with_ci(sg['overall_underdiagnosis'], 'underdiagnosis_rate'))}</p>"]
    ud = sg["overall_underdiagnosis"]
    share = ud.get("predicted_no_finding_share")
    if ud.get("underdiagnosis_rate") == 0 and share is not None:
        normal = ud.get("normal_predicted_normal_share")
        parts.append(f"<p>The rate is 0 because the model predicts at least one finding on "
                     f"{fmt(100 * (1 - share), 1)}% of all images at these thresholds (one threshold per finding, each "
                     f"set for sensitivity on validation): it almost never says &quot;no finding&quot;, so it cannot "
                     f"miss an abnormal image. That is not good performance: only "
                     f"{fmt(None if normal is None else 100 * normal, 1)}% of the images without any finding were "
                     f"predicted normal.</p>")
    rows = []
    for dim, groups in sg["dimensions"].items():
        for g, e in groups.items():
            if "reason" in e:
                rows.append([dim, g, e["n_images"], e["n_patients"], "", "", "", "", e["reason"]])
                continue
            ud = e["underdiagnosis"]
            rows.append([dim, g, e["n_images"], e["n_patients"], with_ci(e, "mean_auroc"),
                         with_ci(e["mean_auroc_gap"], "gap"), with_ci(ud, "underdiagnosis_rate"),
                         with_ci(ud["gap"], "gap"), ""])
    parts.append(table(["dimension", "group", "images", "patients", "mean AUROC (95% CI)", "gap to overall",
                        "underdiagnosis rate", "underdiagnosis gap", "note"], rows, left=2))
    parts.append("<p>Per-finding AUROC, AUPRC and operating-point metrics of every subgroup (with gaps) are in "
                 "metrics.json under <code>subgroups</code>.</p>")
    return "".join(parts)


def _published(pub: dict) -> str:
    if not pub:
        return "<p>Not available.</p>"
    studies = pub["studies"]
    parts = ["<p>" + escape(pub["note"]) + "</p><ul>"]
    for sid, st in studies.items():
        verdict = "comparable" if st["comparable"] else "NOT comparable"
        parts.append(f"<li><b>{escape(st['name'])}</b> — {escape(verdict)}: {escape(st['reason'])}. "
                     f"Split: {escape(st['split'])}. <i>{escape(st['citation'])}</i></li>")
    parts.append("</ul>")
    # a difference is only shown against a study it can be compared with
    diff = [s for s in studies if studies[s]["comparable"]]
    header = ["finding", "this model"] + [f"{studies[s]['name']}" for s in studies] + \
             [f"difference vs {studies[s]['name']}" for s in diff]
    rows = [[r["finding"], fmt(r["ours"])] + [fmt(r[s]) for s in studies] + [fmt(r[f"{s}_diff"]) for s in diff]
            for r in pub["rows"]]
    if not diff:
        parts.append("<p>No study is comparable, so no differences are shown: the published values are context "
                     "only.</p>")
    parts.append(table(header, rows))
    return "".join(parts)


def _adjudicated(adj: dict | None) -> str:
    if not adj:
        return "<p>Not run (pass <code>--adjudicated CSV</code>).</p>"
    parts = [f"<p>{adj['n_matched_images']} images of this split are in the adjudicated table ({escape(adj['source'])}"
             f"). Mapping from the model outputs: " +
             "; ".join(f"{escape(k)} ← {escape(' / '.join(v)) if v else 'not covered'}" for k, v in
                       adj["mapping"].items()) + ".</p>"]
    if adj.get("reason"):
        parts.append(f"<p>{escape(adj['reason'])}</p>")
    if adj.get("per_class"):
        parts.append(table(["adjudicated finding", "positives", "negatives", "AUROC (95% CI)", "AUPRC (95% CI)",
                            "note"], [[k, e["n_pos"], e["n_neg"], with_ci(e, "auroc"), with_ci(e, "auprc"),
                                       e.get("reason", "")] for k, e in adj["per_class"].items()]))
    for k, why in adj.get("not_covered", {}).items():
        parts.append(f"<p>{escape(k)}: not covered ({escape(why)}).</p>")
    return "".join(parts)


def _comparison(cmp: dict | None) -> str:
    if not cmp:
        return "<p>Not run (pass <code>--compare OTHER_BUNDLE</code>).</p>"
    rows = []
    for name, e in cmp["per_class"].items():
        if "reason" in e:
            rows.append([name, "", "", "", e["reason"]])
            continue
        d, b = e["delong"], e["paired_bootstrap"]
        rows.append([name, fmt(b["diff"]), ci_range(b['ci_low'], b['ci_high']), fmt(b["p_value"]),
                     f"DeLong p = {fmt(d.get('p_value'), 4)}"])
    m = cmp["mean_auroc"]
    rows.append(["mean AUROC", fmt(m["diff"]), ci_range(m['ci_low'], m['ci_high']), fmt(m["p_value"]), ""])
    return (f"<p>{escape(cmp['note'])}. Compared bundle: <code>{escape(str(cmp.get('other', '')))}</code>.</p>" +
            table(["finding", "AUROC difference", "paired bootstrap 95% CI", "bootstrap p", "DeLong"], rows))


def _triage(tr: dict | None, fig: bytes | None) -> str:
    if not tr:
        return "<p>Not available.</p>"
    ab = tr.get("abnormality", {})
    parts = [f"<p>Abnormality score: {escape(ab.get('score', ''))}. AUROC for abnormal (any finding) vs normal: "
             f"{escape(with_ci(ab, 'auroc'))} (n = {ab.get('n_abnormal', 'n/a')} abnormal, "
             f"{ab.get('n_normal', 'n/a')} normal).</p>"]
    sim = tr.get("simulation")
    if sim:
        p = sim["params"]
        parts.append(f"<p>Worklist simulation: {p['readers']} readers, Poisson arrivals at "
                     f"{fmt(p['arrival_rate_per_hour'], 1)} cases/hour for {fmt(p['hours'], 1)} hours, "
                     f"{escape(p['read_dist'])} reading time with mean {fmt(p['read_minutes'], 1)} min "
                     f"(utilisation {fmt(p['utilisation'], 2)}), seed {p['seed']}; {sim['n_cases']} cases, "
                     f"{sim['n_abnormal']} abnormal.</p>")
        parts.append(table(["turnaround of abnormal cases (min)", "first-in-first-out", "priority by score",
                            "reduction"],
                           [["mean", fmt(sim["fifo_mean"], 1), fmt(sim["priority_mean"], 1),
                             f"{fmt(sim['mean_reduction_pct'], 1)} %"],
                            ["90th percentile", fmt(sim["fifo_p90"], 1), fmt(sim["priority_p90"], 1),
                             f"{fmt(sim['p90_reduction_pct'], 1)} %"]]))
        parts.append(img(fig, "triage turnaround"))
    return "".join(parts)


def _localisation(loc: dict | None) -> str:
    if not loc:
        return "<p>Not available.</p>"
    if "reason" in loc and len(loc) == 1:
        return f"<p>Localisation unavailable: {escape(loc['reason'])}</p>"
    entries = {n: e for n, e in loc.items() if isinstance(e, dict) and "n_boxes" in e}
    if not entries:
        return "<p>Not available.</p>"
    # One column per T(IoBB), as in the ChestX-ray8 paper's localisation table.
    acc_keys = [k for k in next(iter(entries.values())) if k.startswith("acc_iobb@")]
    rows = [[name, e["n_boxes"], *(fmt(e.get(k)) for k in acc_keys), fmt(e.get("mean_best_iou")),
             fmt(e.get("mean_best_iobb"))] for name, e in entries.items()]
    head = ["finding", "boxes", *(f"acc T(IoBB)={k.split('@')[1]}" for k in acc_keys), "mean best IoU",
            "mean best IoBB"]
    how = ""
    if loc.get("method"):
        how = f"<p>Maps: {escape(str(loc['method']))}; box parameters: {escape(str(loc.get('box_params', '')))}.</p>"
    return how + table(head, rows) + "<p>Accuracy: share of ground-truth boxes hit by a heatmap box with IoBB &ge; T; " \
                                     "IoU-based accuracies are in metrics.json.</p>"


def _gallery(gallery) -> str:
    if isinstance(gallery, str):
        return f"<p>heatmaps unavailable: {escape(gallery)}</p>"
    if not gallery:
        return "<p>heatmaps unavailable: no confident true or false positives to show</p>"
    figs = "".join(f"<figure>{img(g['png_bytes'], g['finding'])}<figcaption>{escape(g['finding'])} — "
                   f"{'true' if g['kind'] == 'TP' else 'false'} positive, p = {fmt(g['prob'])}</figcaption></figure>"
                   for g in gallery)
    legend = ('<p class="legend">Heatmap colours: jet scale, red = strongest evidence for the finding. '
              '<span class="sw" style="border-color:#fff"></span> white boxes: regions the heatmap marks (pixels '
              'at or above the box threshold of its peak); <span class="sw" style="border-color:#0f0"></span> '
              "green boxes: the radiologist's ground-truth box for that finding, where the dataset has one.</p>")
    return f'{legend}<div class="gallery">{figs}</div>'


def _model_card(m: dict) -> str:
    data = m.get("data", {})
    bundle = m.get("bundle", {})
    phantom = data.get("is_phantom")
    lim = ["Labels of NIH ChestX-ray14 were mined from radiology reports by NLP and are noisy; AUROC against them "
           "is not diagnostic accuracy.",
           "Confidence intervals resample patients of this test split only; they do not cover other hospitals, "
           "scanners or populations (see the subgroup section).",
           "Operating points were chosen on the validation split and may not transfer to other prevalences."]
    if phantom:
        lim.insert(0, "The data are synthetic phantoms: these numbers say nothing about clinical performance.")
    items = [("Intended use", RESEARCH_NOTICE),
             ("Model", f"{bundle.get('arch', 'ensemble' if bundle.get('ensemble') else 'n/a')}; bundle "
                       f"{bundle.get('path', 'n/a')}; {len(m.get('label_names', []))} findings"),
             ("Data", f"cache {data.get('cache', 'n/a')} (source {data.get('source', 'n/a')}), split "
                      f"{data.get('split', 'n/a')}: {data.get('n_images', 'n/a')} images of "
                      f"{data.get('n_patients', 'n/a')} patients; validation "
                      f"{data.get('n_val_images', 0)} images"),
             ("Metrics", f"mean AUROC {with_ci(m, 'mean_auroc')} over {len(m.get('mean_auroc_classes', []))} "
                         f"findings; 95% CIs from {m.get('bootstrap', {}).get('n_boot')} patient-clustered bootstrap "
                         f"replicates (seed {m.get('bootstrap', {}).get('seed')})"),
             ("Subgroups", "sex, age band, view and data source (section above)"),
             ("Limitations", " ".join(lim))]
    return "<dl>" + "".join(f"<dt><b>{escape(k)}</b></dt><dd>{escape(str(v))}</dd>" for k, v in items) + "</dl>"


def render_report(m: dict, figures: dict[str, bytes | None], gallery, command: str) -> str:
    """The report as one HTML string. ``m``: the metrics.json content; ``figures``: PNG bytes by name (roc, pr,
    reliability, forest_auroc, forest_underdiagnosis, triage); ``gallery``: explain's gallery list, or a string
    saying why heatmaps are unavailable; ``command``: the CLI line that reproduces every number."""
    phantom = m.get("data", {}).get("is_phantom")
    warn = f'<p class="warn">{escape(PHANTOM_WARNING)}</p>' if phantom else ""
    if m.get("bundle", {}).get("trained_on_synthetic"):
        warn += f'<p class="warn">{escape(SYNTHETIC_WARNING)}</p>'
    cal = m.get("calibration", {})
    cal_text = (f"Mean expected calibration error (ECE, {cal.get('n_bins')} equal-width bins): "
                f"{fmt(cal.get('mean_ece'))}. Calibration applied: "
                f"{escape(str((cal.get('method') or 'none')))}.")
    sections = [
        ("Reproduce", f"<p>Every number in this report comes from:</p><pre>{escape(command)}</pre>"),
        ("Summary", f"<p>Mean AUROC {escape(with_ci(m, 'mean_auroc'))} over "
                    f"{len(m.get('mean_auroc_classes', []))} findings (95% CI: patient-clustered bootstrap, "
                    f"{m.get('bootstrap', {}).get('n_boot')} replicates).</p>"),
        ("Per-finding discrimination", _per_class(m)),
        ("ROC curves (95% bootstrap band)", img(figures.get("roc"), "ROC curves")),
        ("Precision-recall curves (95% bootstrap band)", img(figures.get("pr"), "PR curves")),
        ("Operating points", "<p>Thresholds chosen on the validation split, applied to the test split.</p>" +
         _operating(m)),
        ("Calibration", f"<p>{cal_text}</p>" + img(figures.get("reliability"), "reliability diagrams")),
        ("Subgroups", _subgroups(m.get("subgroups", {})) + img(figures.get("forest_auroc"), "subgroup AUROC") +
         img(figures.get("forest_underdiagnosis"), "subgroup underdiagnosis")),
        ("Published results", _published(m.get("published", {}))),
        ("Radiologist-adjudicated labels", _adjudicated(m.get("adjudicated"))),
        ("Model comparison", _comparison(m.get("comparison"))),
        ("Normal / abnormal triage", _triage(m.get("triage"), figures.get("triage"))),
        ("Localisation", _localisation(m.get("localisation"))),
        ("Heatmaps: most confident true and false positives", _gallery(gallery)),
        ("Model card", _model_card(m)),
    ]
    body = "".join(f"<h2>{escape(t)}</h2>{html}" for t, html in sections)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>cxrkit evaluation report</title><style>{CSS}</style></head><body>"
            f"<h1>cxrkit evaluation report</h1>{warn}<p class=\"notice\">{escape(RESEARCH_NOTICE)}</p>"
            f"{body}<p><small>cxrkit {escape(str(m.get('cxrkit_version', '')))}, {escape(str(m.get('created', '')))}"
            f"</small></p></body></html>\n")
