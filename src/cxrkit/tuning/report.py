"""`cxr tune report DIR`: best.json (the best trial, its params and bundle) and report.html (Optuna's plotly
figures with plotly.js inlined, so the page works offline, a learning-curve panel per trial, the table of trials)."""
from __future__ import annotations

import html
import json
from pathlib import Path

from cxrkit.tuning.study import TUNE_JSON, TuneError, _optuna, finished_states, make_storage

BEST_JSON = "best.json"
BEST_BUNDLE = "best_bundle"
REPORT_HTML = "report.html"


def load_study(out: str | Path, storage: str | None = None, study: str | None = None):
    """The study a `cxr tune --out DIR` run recorded in DIR/tune.json (or the storage/name given)."""
    optuna = _optuna()
    meta_path = Path(out) / TUNE_JSON
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    storage, study = storage or meta.get("storage"), study or meta.get("study")
    if not storage or not study:
        raise TuneError(f"{out} holds no {TUNE_JSON}; pass the folder `cxr tune --out` wrote, or --storage and "
                        "--study")
    try:
        return optuna.load_study(study_name=study, storage=make_storage(storage))
    except KeyError as exc:
        raise TuneError(f"no study {study!r} in {storage}") from exc


def _worker(trial) -> dict:
    return trial.user_attrs.get("worker") or {}  # host, pid, ... as `cxr tune` recorded them


def where_ran(trial) -> str:
    """``host pid N`` of the worker that ran a trial (recorded by `cxr tune`), for trials whose folder is elsewhere."""
    return f"{_worker(trial).get('host', '?')} pid {_worker(trial).get('pid', '?')}"


def is_here(trial, out: Path) -> bool:
    """Whether the trial's run folder is under this --out: workers on other machines (one PostgreSQL study, each
    machine its own --out) keep their trials' folders on their own disks."""
    return "run_dir" in trial.user_attrs and (Path(out) / trial.user_attrs["run_dir"] / "config.json").is_file()


def best_summary(study, out: Path) -> dict:
    optuna = _optuna()
    states = {s.name: sum(t.state == s for t in study.trials) for s in optuna.trial.TrialState}
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        raise TuneError(f"study {study.study_name!r} has no complete trial yet ({states}); run more trials")
    best = study.best_trial
    bundle = best.user_attrs.get("bundle")
    here = is_here(best, out)
    summary = {"study": study.study_name, "direction": study.direction.name.lower(), "best_trial": best.number,
               "value": best.value, "params": best.params, "derived": best.user_attrs.get("derived", {}),
               "run_dir": str((out / best.user_attrs["run_dir"]).resolve()) if "run_dir" in best.user_attrs else None,
               "bundle": str((out / bundle).resolve()) if bundle and here else None, "trials": states,
               "ran_on": best.user_attrs.get("worker"),
               "note": "research use only; phantom-data results are synthetic"}
    if bundle and not here:
        summary["elsewhere"] = (f"the best trial ran on {where_ran(best)} with another --out: its bundle is "
                                f"{best.user_attrs['run_dir']}/bundle under that worker's --out; copy it here or run "
                                "`cxr tune report` there")
    return summary


def top_trials(out: str | Path, k: int, storage: str | None = None, study_name: str | None = None) -> list[dict]:
    """The ``k`` best COMPLETE trials of the study in DIR (pruned ones stopped early and are left out), best first:
    ``[{"number", "value", "params", "bundle"}]``; what `cxr ensemble --from-tune DIR --top-k K` combines."""
    optuna = _optuna()
    if k < 1:
        raise TuneError(f"--top-k must be >= 1, got {k}")
    out = Path(out)
    study = load_study(out, storage, study_name)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE and t.user_attrs.get("bundle")]
    complete = [t for t in done if (out / t.user_attrs["bundle"] / "model.safetensors").is_file()]
    if len(complete) < k:
        away = len(done) - len(complete)
        raise TuneError(f"study {study.study_name!r} in {out} has {len(complete)} complete trials with a bundle, "
                        f"fewer than --top-k {k}; lower --top-k or run more trials"
                        + (f" ({away} more ran under another worker's --out: put the workers' --out on one shared "
                           "file system, or copy their trials/ folders here)" if away else ""))
    sign = -1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else 1.0
    best = sorted(complete, key=lambda t: (sign * t.value, t.number))[:k]
    return [{"number": t.number, "value": t.value, "params": t.params, "bundle": str(out / t.user_attrs["bundle"])}
            for t in best]


def _copy_best_bundle(src: Path, dest: Path) -> Path:
    """DIR/best_bundle: a copy of the best trial's bundle, swapped in whole (a reader never sees half of one)."""
    import shutil
    import tempfile

    tmp = Path(tempfile.mkdtemp(prefix=".best_bundle.", dir=dest.parent))
    shutil.copytree(src, tmp / "b")
    old = dest.with_name(dest.name + ".old")
    if dest.exists():
        dest.rename(old)
    (tmp / "b").rename(dest)
    shutil.rmtree(old, ignore_errors=True)
    shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _curves(study, out: Path):
    """One panel per finished trial: validation mean AUROC and validation loss by epoch, from its history.jsonl."""
    import math

    from plotly.subplots import make_subplots

    trials = [t for t in study.trials if t.state in finished_states() and "run_dir" in t.user_attrs]
    if not trials:
        return None
    cols = min(4, len(trials))
    rows = math.ceil(len(trials) / cols)
    titles = [f"trial {t.number} ({t.state.name.lower()}{'' if is_here(t, out) else ', ran on ' + where_ran(t)})"
              for t in trials]
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=titles, specs=[[{"secondary_y": True}] * cols] * rows)
    for i, t in enumerate(trials):
        hist = Path(out) / t.user_attrs["run_dir"] / "history.jsonl"
        records = [json.loads(x) for x in hist.read_text().splitlines() if x.strip()] if hist.is_file() else []
        epochs = [r["epoch"] + 1 for r in records]
        r, c = i // cols + 1, i % cols + 1
        fig.add_scatter(x=epochs, y=[r_.get("val_mean_auroc") for r_ in records], name="val mean AUROC",
                        line={"color": "#1f77b4"}, showlegend=i == 0, row=r, col=c)
        fig.add_scatter(x=epochs, y=[r_.get("val_loss") for r_ in records], name="val loss",
                        line={"color": "#d62728", "dash": "dot"}, showlegend=i == 0, row=r, col=c, secondary_y=True)
    fig.update_layout(title="Learning curves per trial (epoch; left: val mean AUROC, right: val loss)",
                      height=260 * rows + 80)
    return fig


def write_report(out: str | Path, storage: str | None = None, study_name: str | None = None) -> dict:
    """Write DIR/best.json and DIR/report.html; returns the best.json content."""
    from cxrkit.fileio import atomic_write_bytes, atomic_write_json

    _optuna()
    try:
        import plotly  # noqa: F401
    except ImportError as exc:
        raise TuneError("`cxr tune report` needs plotly: pip install 'cxrkit[tune]'") from exc
    from optuna import visualization as vis

    out = Path(out)
    study = load_study(out, storage, study_name)
    summary = best_summary(study, out)
    if summary["bundle"]:
        summary["best_bundle"] = str(_copy_best_bundle(Path(summary["bundle"]), out / BEST_BUNDLE).resolve())
    elif (out / BEST_BUNDLE).is_dir():  # an earlier best's copy, no longer the best: never leave it to be deployed
        import shutil

        shutil.rmtree(out / BEST_BUNDLE)
    atomic_write_json(out / BEST_JSON, summary)

    figures, notes = [], [summary["elsewhere"]] if "elsewhere" in summary else []
    away = [t for t in study.trials if t.state in finished_states() and not is_here(t, out)]
    if away:
        hosts = sorted({str(_worker(t).get("host", "?")) for t in away})
        notes.append(f"{len(away)} finished trials ran under another --out (hosts {', '.join(hosts)}): their "
                     "learning curves are empty here; the table and the Optuna figures include them")
    makers = [("Optimisation history", vis.plot_optimization_history),
              ("Parameter importances", vis.plot_param_importances),
              ("Intermediate values (the metric the pruner saw)", vis.plot_intermediate_values),
              ("Slice plot", vis.plot_slice), ("Parallel coordinates", vis.plot_parallel_coordinate)]
    for title, make in makers:
        try:
            fig = make(study)
        except (ValueError, RuntimeError, ZeroDivisionError) as exc:  # e.g. importances need 2+ complete trials
            notes.append(f"{title}: not drawn ({exc})")
            continue
        fig.update_layout(title=title)
        figures.append(fig)
    curves = _curves(study, out)
    if curves is not None:
        figures.append(curves)

    parts = []
    for i, fig in enumerate(figures):
        parts.append(fig.to_html(full_html=False, include_plotlyjs=(i == 0)))  # plotly.js inlined once: offline
    table = study.trials_dataframe(attrs=("number", "value", "state", "params", "duration", "user_attrs"))
    rows_html = table.to_html(index=False, float_format=lambda v: f"{v:.4g}", na_rep="", border=0,
                              classes="trials")
    derived_html = (f" (derived <code>{html.escape(json.dumps(summary['derived']))}</code>)"
                    if summary.get("derived") else "")
    notes_html = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>cxr tune: {html.escape(study.study_name)}</title>
<style>body{{font-family:sans-serif;margin:1.5em}} table.trials{{border-collapse:collapse;font-size:12px}}
table.trials td,table.trials th{{border:1px solid #ccc;padding:2px 6px}} .notice{{color:#a00}}</style></head><body>
<h1>Study {html.escape(study.study_name)}</h1>
<p class="notice">Research use only. Results on phantom data are synthetic.</p>
<p>Best trial {summary['best_trial']}: {html.escape(study.direction.name.lower())} value {summary['value']:.4f};
params <code>{html.escape(json.dumps(summary['params']))}</code>{derived_html};
bundle <code>{html.escape(str(summary['bundle']))}</code>.
Trials by state: <code>{html.escape(json.dumps(summary['trials']))}</code>.</p>
<ul>{notes_html}</ul>
{''.join(parts)}
<h2>Trials</h2>{rows_html}
</body></html>"""
    atomic_write_bytes(out / REPORT_HTML, page.encode())
    return summary


__all__ = ["load_study", "best_summary", "is_here", "top_trials", "where_ran", "write_report"]
