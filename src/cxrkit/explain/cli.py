"""`cxr explain`: heatmap figures, boxes and an HTML contact sheet for image files."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

RESULTS_NAME = "explanations.json"
IMAGE_RESULT = "explanation.json"


def _parse_threshold(text: str) -> float | str:
    from cxrkit.explain.boxes import ExplainError

    if text == "otsu":
        return "otsu"
    try:
        value = float(text)
    except ValueError:
        raise ExplainError(f"--box-threshold must be a number in (0, 1] or 'otsu', got {text!r}") from None
    if not 0 < value <= 1:
        raise ExplainError(f"--box-threshold must be in (0, 1] (a fraction of the map's maximum), got {value}")
    return value


def _safe_name(text: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._") or "image"


def _unique_stems(paths: list[Path]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for p in paths:
        stem = _safe_name(p.stem)
        seen[stem] = seen.get(stem, 0) + 1
        out.append(stem if seen[stem] == 1 else f"{stem}_{seen[stem]}")
    return out


def explain_file(predictor, path: Path, folder: Path, request: dict) -> dict:
    """Explain one image file into ``folder`` (one PNG per finding + explanation.json); returns its record.

    A folder whose explanation.json was written for the same request is reused (an interrupted run resumes)."""
    import json

    import numpy as np

    from cxrkit.data.decode import read_image
    from cxrkit.explain.boxes import boxes_from_heatmap
    from cxrkit.explain.cam import explain_images
    from cxrkit.explain.finding_boxes import boxes_for
    from cxrkit.explain.overlay import render_finding, write_png

    done = folder / IMAGE_RESULT
    if done.is_file():
        try:
            record = json.loads(done.read_text())
            if record.get("request") == request and all((folder.parent / f["png"]).is_file()
                                                        for f in record["findings"].values()):
                return record
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
            pass  # damaged or foreign: explain again
    image = read_image(path)
    probs = predictor.predict([image])[0]
    names = list(predictor.label_names)
    if request["findings"]:
        chosen = list(request["findings"])
    else:
        chosen = [names[i] for i in np.argsort(-probs, kind="stable")[: request["top_k"]]]
    maps = explain_images(predictor, [image], chosen, method=request["method"])[0]
    folder.mkdir(parents=True, exist_ok=True)
    findings = {}
    for name in chosen:
        p = float(probs[names.index(name)])
        if request["box_threshold"] is None:  # the bundle's parameters for this finding and method
            boxes = boxes_for(predictor, name, maps[name], request["concrete_method"])
        else:
            boxes = boxes_from_heatmap(maps[name], request["box_threshold"])
        png = folder / f"{_safe_name(name)}.png"
        write_png(png, render_finding(image, maps[name], boxes, name, p, method=request["concrete_method"]))
        findings[name] = {"prob": p, "png": f"{folder.name}/{png.name}",
                          "boxes": [{"x": b[0], "y": b[1], "w": b[2], "h": b[3], "score": round(b[4], 4)}
                                    for b in boxes]}
    record = {"image": str(path), "height": int(image.shape[0]), "width": int(image.shape[1]),
              "probabilities": {n: float(v) for n, v in zip(names, probs)},
              "thresholds": {n: float(t) for n, t in zip(names, predictor.thresholds)},
              "findings": findings, "request": request}
    tmp = done.with_name(f".{done.name}.tmp")
    tmp.write_text(json.dumps(record, indent=2))
    tmp.replace(done)
    return record


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    register_localisation(app)

    @app.command("explain")
    def explain_cmd(
        bundle: Path = typer.Argument(..., help="Model bundle directory (cxr train writes RUN_DIR/bundle)."),
        images: List[Path] = typer.Argument(..., help="PNG, JPEG or DICOM files."),
        out: Path = typer.Option(..., "--out", "-o", help="Output folder: DIR/<image>/<finding>.png, "
                                 f"{RESULTS_NAME}, index.html."),
        method: str = typer.Option("auto", help="Method: auto (the bundle's tuned map method, else cam / attention) "
                                   "| cam | gradcam | gradcam++ | attention | layercam | layercam-x4 | layercam-x8 | "
                                   "cam-layercam | per-finding."),
        findings: Optional[str] = typer.Option(None, help="Comma-separated findings to explain, e.g. "
                                               "Effusion,Cardiomegaly.", show_default="the top-k by probability"),
        top_k: Optional[int] = typer.Option(None, "--top-k", min=1, help="Explain the K most probable findings.",
                                            show_default="3"),
        box_threshold: Optional[str] = typer.Option(None, help="Boxes cover pixels >= this fraction of the map's "
                                                    "peak, or 'otsu'.", show_default="the bundle's per-finding box "
                                                    "parameters (cxr tune-boxes), else 0.5"),
        device: str = typer.Option("cpu", help="Torch device, e.g. cpu or cuda."),
    ) -> None:
        """Heatmaps with boxes for each finding, a JSON of boxes and probabilities, and an index.html sheet."""
        import json

        from rich.console import Console
        from rich.progress import Progress

        from cxrkit import RESEARCH_NOTICE
        from cxrkit.bundle import SYNTHETIC_WARNING, load_bundle, trained_on_synthetic
        from cxrkit.data.errors import CxrError
        from cxrkit.explain.boxes import ExplainError
        from cxrkit.explain.cam import concrete_method, finding_indices
        from cxrkit.explain.overlay import contact_sheet_html

        console = Console(stderr=True)
        typer.echo(RESEARCH_NOTICE)
        if findings and top_k:
            raise ExplainError("give either --findings or --top-k, not both")
        predictor = load_bundle(bundle, device=device)
        synthetic = trained_on_synthetic(predictor.config)
        if synthetic:
            typer.secho(f"warning: {SYNTHETIC_WARNING}", fg=typer.colors.YELLOW, err=True)
        chosen = [f.strip() for f in findings.split(",") if f.strip()] if findings else None
        if chosen is not None:
            finding_indices(predictor, chosen)  # unknown names fail before any work
        weights = Path(bundle) / "model.safetensors"
        request = {"bundle": str(Path(bundle).resolve()),
                   # a bundle retrained in place must not reuse old figures
                   "bundle_version": [(predictor.config.get("provenance") or {}).get("created"),
                                      weights.stat().st_mtime_ns if weights.is_file() else None],
                   "method": method,
                   # boxes retuned in place must not reuse old figures either
                   "boxes_tuned": ((predictor.config.get("explain") or {}).get("box_tuning") or {}).get("tuned"),
                   "concrete_method": concrete_method(predictor, method), "findings": chosen,
                   "top_k": None if chosen else min(top_k or 3, len(predictor.label_names)),
                   "box_threshold": None if box_threshold is None else _parse_threshold(box_threshold)}
        out.mkdir(parents=True, exist_ok=True)
        records, entries = [], []
        with Progress(console=console, transient=True) as bar:
            task = bar.add_task("explaining", total=len(images))
            for path, stem in zip(images, _unique_stems(list(images))):
                try:
                    rec = explain_file(predictor, Path(path), out / stem, request)
                    records.append(rec)
                    entries.append({"image": Path(path).name, "figures": [
                        {"finding": n, "prob": f["prob"], "png": f["png"], "boxes": len(f["boxes"])}
                        for n, f in rec["findings"].items()]})
                except CxrError as exc:  # a bad file is reported and skipped, the others still get explained
                    console.print(f"[yellow]skipped[/] {path}: {exc}")
                    records.append({"image": str(path), "error": str(exc)})
                    entries.append({"image": Path(path).name, "error": str(exc)})
                bar.advance(task)
        (out / RESULTS_NAME).write_text(json.dumps({"notice": RESEARCH_NOTICE, "request": request,
                                                    "images": records}, indent=2))
        (out / "index.html").write_text(contact_sheet_html(entries, title=f"cxrkit explanations ({bundle})",
                                                                   warning=SYNTHETIC_WARNING if synthetic else None))
        n_bad = sum("error" in r for r in records)
        typer.echo(f"explained {len(records) - n_bad} image(s), skipped {n_bad}; wrote {out / 'index.html'} and "
                   f"{out / RESULTS_NAME}")
        if n_bad == len(records):
            raise ExplainError("no image could be explained (see the reasons above)")


def _methods(text: str) -> list[str]:
    from cxrkit.explain.boxes import ExplainError
    from cxrkit.explain.cam import METHODS

    methods = [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in methods if m not in METHODS or m == "auto"]
    if not methods or bad:
        raise ExplainError(f"--methods: unknown method(s) {bad}; give a comma-separated list of "
                           f"{', '.join(m for m in METHODS if m != 'auto')}")
    return list(dict.fromkeys(methods))


def _open(bundle: Path, cache: Path, device: str):
    from cxrkit.bundle import SYNTHETIC_WARNING, load_bundle, trained_on_synthetic
    from cxrkit.data.cache import open_cache

    predictor = load_bundle(bundle, device=device)
    if trained_on_synthetic(predictor.config):
        typer.secho(f"warning: {SYNTHETIC_WARNING}", fg=typer.colors.YELLOW, err=True)
    return predictor, open_cache(cache)


def register_localisation(app: typer.Typer) -> None:
    @app.command("tune-boxes")
    def tune_boxes_cmd(
        bundle: Path = typer.Argument(..., help="Model bundle directory; the fitted parameters are stored in it."),
        cache: Path = typer.Argument(..., help="Cache with ground-truth boxes (cxr prepare; phantom sets have them)."),
        split: str = typer.Option("val", help="Split whose boxes the parameters are fitted on."),
        methods: Optional[str] = typer.Option(None, help="Comma-separated map methods to tune.",
                                              show_default="cam, every LayerCAM stage the model has, cam-layercam"),
        set_method: bool = typer.Option(True, help="Make the best method on the split the bundle's map method."),
        per_finding: bool = typer.Option(True, help="Also let each finding keep its own best method ('per-finding',"
                                                    " the map method when it beats every single one)."),
        batch_size: int = typer.Option(16, min=1, help="Maps per forward pass."),
        device: str = typer.Option("cpu", help="Torch device, e.g. cpu or cuda."),
        quiet: bool = typer.Option(False, help="No progress bars."),
    ) -> None:
        """Fit each finding's box parameters (threshold, minimum area, boxes) on a split's ground-truth boxes."""
        from cxrkit import RESEARCH_NOTICE
        from cxrkit.explain.box_tuning import CRITERION, store_tuning, tune_boxes

        chosen = None if methods is None else _methods(methods)
        predictor, cache_obj = _open(bundle, cache, device)
        if chosen is not None and "per-finding" in chosen:
            raise typer.BadParameter("--methods lists the methods to tune; per-finding combines them (--per-finding)")
        result = tune_boxes(predictor, cache_obj, cache_obj.rows(split), chosen, batch_size, progress=not quiet,
                            per_finding=per_finding)
        path = store_tuning(bundle, result, split, set_method=set_method)
        typer.echo(f"{split} accuracy at T(IoBB)={CRITERION:g} on {result['n_boxes']} boxes (default parameters -> "
                   "tuned):")
        for method, acc in result["overall"].items():
            typer.echo(f"  {method:14s} {result['overall_default'][method]:.3f} -> {acc:.3f}  "
                       f"({result['seconds'][method]:.1f} s of maps)")
        for method, why in result.get("skipped", {}).items():
            typer.echo(f"  {method:14s} skipped: {why}")
        for method, fitted in result["methods"].items():
            typer.echo(f"{method}: " + "; ".join(f"{f} t={p['threshold']:g} a={p['min_area_frac']:g} "
                                                 f"k={p['max_boxes']} ({p['val_acc']:.2f})" for f, p in fitted.items()))
        if result.get("per_finding"):
            typer.echo("per-finding: " + "; ".join(f"{f} {m}" for f, m in result["per_finding"]["methods"].items()))
        note = f"; map method now {result['method']}" if set_method else ""
        typer.echo(f"stored in {path}{note}")
        typer.echo(RESEARCH_NOTICE)

    @app.command("localise")
    def localise_cmd(
        bundle: Path = typer.Argument(..., help="Model bundle directory."),
        cache: Path = typer.Argument(..., help="Cache with ground-truth boxes."),
        split: str = typer.Option("test", help="Split to score."),
        methods: str = typer.Option("cam,layercam,cam-layercam", help="Comma-separated map methods to score."),
        out: Optional[Path] = typer.Option(None, "--out", "-o", help="Folder for localisation.json, .md and .png.",
                                           show_default="print only"),
        batch_size: int = typer.Option(16, min=1, help="Maps per forward pass."),
        device: str = typer.Option("cpu", help="Torch device, e.g. cpu or cuda."),
        quiet: bool = typer.Option(False, help="No progress bars."),
    ) -> None:
        """Per-finding localisation accuracy at T(IoBB)=0.5 (ChestX-ray8 protocol) for each map method."""
        import json

        from cxrkit import RESEARCH_NOTICE
        from cxrkit.explain.box_tuning import localisation_table
        from cxrkit.explain.localise_report import figure, markdown

        chosen = _methods(methods)
        predictor, cache_obj = _open(bundle, cache, device)
        result = localisation_table(predictor, cache_obj, cache_obj.rows(split), chosen, batch_size,
                                    progress=not quiet)
        text = markdown(result)
        typer.echo(f"accuracy at T(IoBB)=0.5 on the {split} split ({result['n_pairs']} image-finding pairs); "
                   "fixed 0.5 = every region >= 0.5 x peak (the paper's rule), defaults / tuned = the box "
                   "parameters")
        typer.echo(text)
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            (out / "localisation.json").write_text(json.dumps({"notice": RESEARCH_NOTICE, "split": split,
                                                               "bundle": str(bundle), **result}, indent=2))
            (out / "localisation.md").write_text(f"> {RESEARCH_NOTICE}\n\n{text}")
            figure(result, out / "localisation.png")
            typer.echo(f"wrote {out / 'localisation.json'}, localisation.md and localisation.png")
        typer.echo(RESEARCH_NOTICE)
