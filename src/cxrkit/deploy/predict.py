"""Batch prediction over files: decode in a thread pool while the model runs, one row per input, never an aborted
batch (a bad file becomes a row with its error), quality verdicts, optional heatmaps, torchrun sharding."""
from __future__ import annotations

import csv
import glob
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from cxrkit import RESEARCH_NOTICE
from cxrkit.data.errors import CxrError, ImageError

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".dcm", ".dicom", ".dic", ""}  # "" : DICOM files often have no suffix
BOX_MAPS = ("bundle", "graph")  # where `cxr predict`'s box maps come from (see predict_files)


class PredictError(CxrError):
    """Batch prediction was asked for something it cannot do (no inputs, bad output path, bad options)."""


def expand_inputs(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """Files, folders (recursive; image suffixes or none, hidden files skipped) and glob patterns -> paths in a
    stable order. A name matching nothing is kept, so it becomes an error row instead of vanishing; so are broken
    symbolic links and FIFOs or other special files inside folders (the decoder refuses them without reading)."""
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if not f.is_dir() and f.suffix.lower() in IMAGE_SUFFIXES
                          and not any(part.startswith(".") for part in f.relative_to(p).parts))
        elif not p.exists() and glob.has_magic(str(item)):
            matches = sorted(Path(f) for f in glob.glob(str(item), recursive=True) if Path(f).is_file())
            out += matches or [p]
        else:
            out.append(p)
    return out


def decode_input(path: str | os.PathLike) -> tuple[np.ndarray, dict[str, Any]]:
    """read_image_with_meta, plus ``colourfulness`` for colour PNG/JPEG (read_image returns grey, so colour
    photographs are only recognisable from the file itself)."""
    from cxrkit.data.decode import DecodeLimits, decode_bytes_with_meta, read_file_bytes
    from cxrkit.deploy.quality_features import add_colourfulness

    limits = DecodeLimits()
    data = read_file_bytes(path, limits)  # read once: the colour check needs the same bytes
    image, meta = decode_bytes_with_meta(data, name=os.fspath(path), limits=limits)
    return image, add_colourfulness(meta, data)


def _safe_decode(path: Path):
    try:
        return decode_input(path)
    except ImageError as exc:
        return exc
    except Exception as exc:  # noqa: BLE001 - a decoder bug on one file must not abort the whole batch
        return ImageError(path, f"could not decode: {type(exc).__name__}: {exc}")


def _header_fields(meta: dict) -> dict[str, Any]:
    from cxrkit.data.dicom import is_chest_radiograph_header

    ok, why = is_chest_radiograph_header(meta)
    return {"modality": meta.get("modality"), "body_part": meta.get("body_part"), "view": meta.get("view"),
            "header_ok": ok, "header_reason": why}


class _Maps:
    """Evidence maps of one film's findings for boxes and heatmap figures: from the exported graph's class maps of
    the same pass when it has them (no second forward), else from the torch model (loaded once, on first use,
    when the predictor is an exported graph without them)."""

    def __init__(self, predictor):
        self.predictor, self._torch = predictor, None

    def explainer(self):
        if self._torch is None:
            if hasattr(self.predictor, "model") or hasattr(self.predictor, "members"):
                self._torch = self.predictor
            elif getattr(self.predictor, "path", None) is not None and Path(self.predictor.path).is_dir():
                from cxrkit.deploy.onnx_runtime import load_predictor

                self._torch = load_predictor(self.predictor.path, backend="torch")
            else:
                raise PredictError("boxes and heatmaps need the bundle's torch model or a graph exported with CAM "
                                   "outputs; pass the bundle directory, or --no-boxes")
        return self._torch

    def __call__(self, image, names: list[str], cam,
                 shape: tuple[int, int] | None = None) -> tuple[str | None, dict[str, np.ndarray]]:
        """(method, {finding: map}): maps covering the whole film, at ``shape`` (height, width) when given, else
        at the film's size."""
        from cxrkit.explain.cam import concrete_method, explain_images, maps_from_graph

        if not names:
            return None, {}
        if cam is not None:
            idx = [self.predictor.label_names.index(n) for n in names]
            return "cam", dict(zip(names, maps_from_graph(self.predictor, cam, idx, *(shape or image.shape))))
        explainer = self.explainer()
        return concrete_method(explainer), explain_images(explainer, [image], names, shapes=[shape])[0]


def _heatmaps(image, maps: dict, probs: np.ndarray, names: list[str], label_names, boxes: dict, out_dir: Path,
              stem: str, method: str) -> list[str]:
    from cxrkit.explain import render_finding
    from cxrkit.explain.overlay import write_png

    written = []
    for name in names:
        path = out_dir / f"{stem}_{name}.png"
        write_png(path, render_finding(image, maps[name], [b[:4] for b in boxes.get(name, [])], name,
                                       float(probs[list(label_names).index(name)]), method=method))
        written.append(str(path))
    return written


def _prepared(predictor, gate) -> bool:
    """Whether the per-image work around the network (fit to the model's geometry, input-record check, an
    image-only quality gate) can run in the decode workers: predictors that keep the shared geometry (not
    ensembles, whose members each have their own) and gates that do not need the model's embedding."""
    from cxrkit.bundle.base import BasePredictor

    return (type(predictor).predict_full is BasePredictor.predict_full
            and not (gate is not None and gate.method.endswith("backbone")))


def _decode_and_prepare(path: Path, predictor, gate):
    """In a worker thread: decode, then everything per image that does not need the network, so the model thread
    only runs the network (on all cores) while the next films are being decoded."""
    from cxrkit.bundle.input_check import input_warning
    from cxrkit.data.transforms import fit_square
    from cxrkit.deploy.quality import quality_verdicts

    d = _safe_decode(path)
    if isinstance(d, Exception):
        return d
    image, meta = d
    try:
        side = predictor.preresize
        square = image if image.shape == (side, side) else fit_square(image, side)[0]
        return image, meta, square, input_warning(image, predictor.config["input"]), \
            quality_verdicts(gate, [image], [meta])[0]
    except Exception as exc:  # noqa: BLE001 - one odd film must not abort the batch
        return ImageError(path, f"could not prepare: {type(exc).__name__}: {exc}")


def default_workers() -> int:
    """Decoding threads when not given: every core (the network's own threads share them; decoding a 1024-px
    film costs about as much as a fast runtime's forward pass, so both must run at once)."""
    return max(2, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 2))


def iter_predictions(predictor, paths: Sequence[str | os.PathLike], *, indices: Sequence[int] | None = None,
                     batch_size: int = 32, workers: int | None = None, gate: Any = "auto",
                     heatmaps: str | Path | None = None, boxes: bool = True, box_maps: str = "bundle",
                     progress: bool = True) -> Iterator[list[dict[str, Any]]]:
    """Yield rows batch by batch, in input order (see :func:`predict_files`)."""
    from tqdm import tqdm

    from cxrkit.deploy.quality import QualityGate, quality_verdicts
    from cxrkit.explain.finding_boxes import graph_cam_serves

    paths = [Path(p) for p in paths]
    indices = list(range(len(paths))) if indices is None else list(indices)
    if gate == "auto":
        gate = QualityGate.from_bundle(predictor)
    if heatmaps is not None:
        heatmaps = Path(heatmaps)
        heatmaps.mkdir(parents=True, exist_ok=True)
    workers = workers or default_workers()
    prepare = _prepared(predictor, gate)
    task = (lambda p: _decode_and_prepare(p, predictor, gate)) if prepare else _safe_decode
    window = max(1, batch_size) * 2
    if box_maps not in BOX_MAPS:
        raise PredictError(f"box maps must be one of {BOX_MAPS}, got {box_maps!r}")
    make_maps = _Maps(predictor)
    # the graph's CAM when it is the bundle's map method (or asked for), else the tuned maps from the torch model
    graph_maps = box_maps == "graph" or graph_cam_serves(predictor)
    ready, maps_done = None, None  # a batch's rows wait for their boxes until the next batch has been run

    def ready_rows(batch):
        rows, done = batch
        if done is not None:
            done.result()  # raises what the box step raised
        return rows

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool, \
            tqdm(total=len(paths), desc="predict", unit="img", disable=not progress) as bar:
        pending = [pool.submit(task, p) for p in paths[:window]]
        for start in range(0, len(paths), batch_size):
            stop = min(start + batch_size, len(paths))
            pending += [pool.submit(task, p) for p in paths[start + window:stop + window]]
            decoded = [f.result() for f in pending[:stop - start]]
            pending = pending[stop - start:]
            rows: list[dict[str, Any]] = []
            good = [(k, d) for k, d in enumerate(decoded) if not isinstance(d, Exception)]
            for k, d in enumerate(decoded):
                rows.append({"index": indices[start + k], "path": str(paths[start + k]),
                             "status": "error" if isinstance(d, Exception) else "ok",
                             "error": getattr(d, "reason", str(d)) if isinstance(d, Exception) else ""})
            if good:
                images = [d[0] for _, d in good]
                metas = [d[1] for _, d in good]
                if prepare:
                    # the network only: the workers fitted the squares and checked the original films
                    out = predictor.predict_full(np.stack([d[2] for _, d in good]), batch_size=batch_size,
                                                 input_warnings=[d[3] for _, d in good])
                    verdicts = [d[4] for _, d in good]
                else:
                    out = predictor.predict_full(images, batch_size=batch_size)
                    verdicts = quality_verdicts(gate, images, metas, out)
                pos = predictor.positives(out["probs"])
                maps_of = []
                for j, (k, (image, meta, *_)) in enumerate(good):
                    row = rows[k]
                    row.update({
                        "width": int(image.shape[1]), "height": int(image.shape[0]),
                        "abnormality": float(out["abnormality"][j]),
                        "findings": [n for n, p in zip(predictor.label_names, pos[j]) if p],
                        "probs": {n: float(p) for n, p in zip(predictor.label_names, out["probs"][j])},
                        "quality_ok": bool(verdicts[j]["ok"]), "quality_score": verdicts[j]["score"],
                        "quality_reason": verdicts[j]["reason"], **_header_fields(meta)})
                    if "input_warning" in out:
                        row["input_warning"] = str(out["input_warning"][j])
                    if boxes or heatmaps is not None:
                        maps_of.append((row, image, j, f"{row['index']:06d}_{paths[start + k].stem}"))
                if maps_of:
                    cams = out.get("cam") if graph_maps else None
                    args = (maps_of, predictor, make_maps, cams, out, pos, boxes, heatmaps)
                    if cams is not None:
                        # the graph's class maps: boxes (one thread, ~1 ms a finding) in a worker while the network
                        # runs the next batch, instead of the network waiting for them
                        maps_done = pool.submit(_add_batch_maps, *args)
                    else:  # the torch explainer runs its own threads; it stays on this thread
                        _add_batch_maps(*args)
            bar.update(stop - start)
            if ready is not None:
                yield ready_rows(ready)
            ready = (rows, maps_done)
            maps_done = None
        if ready is not None:
            yield ready_rows(ready)


def _add_batch_maps(items, predictor, make_maps, cams, out, pos, boxes: bool, heatmaps) -> None:
    """:func:`_add_maps` for one batch's films, ``items`` = [(row, image, j, stem)]; ``cams``: the graph's class
    maps when they are the bundle's maps, else None (the torch model makes them)."""
    for row, image, j, stem in items:
        _add_maps(row, predictor, make_maps, image, None if cams is None else cams[j], out, j, pos[j], boxes,
                  heatmaps, stem)


def _add_maps(row, predictor, make_maps, image, cam, out, j, positives, boxes: bool, heatmaps, stem) -> None:
    """Boxes (``boxes``: {finding: [[x, y, w, h, score]...]} in the film's pixels, positive findings only;
    ``box_method``) and heatmap figures (the positive findings, or the most likely one so every film gets a map
    to look at)."""
    from cxrkit.explain.finding_boxes import box_map_shape, boxes_for

    probs = out["probs"][j]
    positive = [predictor.label_names[i] for i in np.flatnonzero(positives)]
    shown = positive or ([predictor.label_names[int(np.argmax(probs))]] if heatmaps is not None else [])
    # boxes alone need no full-size map: at most BOX_SIDE px, boxes scaled to the film (figures need full size)
    shape = None if heatmaps is not None else box_map_shape(*image.shape)
    try:
        method, maps = make_maps(image, shown, cam, shape)
    except PredictError:
        raise
    except CxrError as exc:  # e.g. a map method whose optional package is missing: the prediction still stands
        log.warning("no evidence maps for %s: %s", row["path"], exc)
        positive, shown, maps, method = [], [], {}, None
    found = {n: [list(b) for b in boxes_for(predictor, n, maps[n], method, film_shape=image.shape)]
             for n in positive}
    if boxes:
        row["boxes"] = found
        row["box_method"] = method if positive else None
    if heatmaps is not None:
        row["heatmaps"] = _heatmaps(image, maps, probs, shown, predictor.label_names, found if boxes else {},
                                    heatmaps, stem, method or "")


# `cxr predict` exit codes (docs/deploy.md): every input predicted / some inputs failed / every input failed.
# 2 stays what it is for every cxr command: the command itself could not run (bad bundle, bad options...).
EXIT_OK, EXIT_SOME_FAILED, EXIT_ALL_FAILED = 0, 1, 3


def status_counts(out: str | Path) -> dict[str, int]:
    """``{"ok": n, "error": m}`` over the rows of a results file written by :func:`write_results`."""
    out = Path(out)
    counts = {"ok": 0, "error": 0}
    with open(out, newline="") as fh:
        if output_format(out) == "jsonl":
            statuses = [json.loads(line)["status"] for line in fh if line.strip()]
        else:
            statuses = [row["status"] for row in csv.DictReader(line for line in fh if not line.startswith("#"))]
    for s in statuses:
        counts[s] = counts.get(s, 0) + 1
    return counts


def exit_code(counts: dict[str, int]) -> int:
    """EXIT_OK when nothing failed, EXIT_ALL_FAILED when nothing succeeded, else EXIT_SOME_FAILED."""
    if not counts.get("error"):
        return EXIT_OK
    return EXIT_ALL_FAILED if not counts.get("ok") else EXIT_SOME_FAILED


def predict_files(predictor, paths: Sequence[str | os.PathLike], *, batch_size: int = 32, workers: int | None = None,
                  gate: Any = "auto", heatmaps: str | Path | None = None, boxes: bool = True, box_maps: str = "bundle",
                  progress: bool = False, indices: Sequence[int] | None = None) -> list[dict[str, Any]]:
    """Predict every file; one row (dict) per input, in input order.

    ``predictor``: a :class:`cxrkit.bundle.Predictor` or :class:`cxrkit.deploy.OnnxPredictor`. ``gate``:
    ``"auto"`` (the bundle's fitted gate, else the fitted-model-free checks), a :class:`QualityGate`, or None.
    Rows: ``index, path, status ("ok"/"error"), error`` and, when decoded, ``width, height, abnormality,
    findings`` (thresholded with the bundle's thresholds), ``probs`` ({finding: p}), ``quality_ok,
    quality_score, quality_reason, modality, body_part, view, header_ok, header_reason`` [, ``boxes``
    ({positive finding: [[x, y, w, h, score], ...]} in the film's pixels, from :func:`cxrkit.explain.boxes_for`),
    ``box_method``] [, ``heatmaps``]. ``box_maps``: "bundle" (the bundle's map method; an exported graph's CAM
    outputs serve only when that is CAM) or "graph" (the graph's CAM whatever the bundle was tuned to: faster,
    coarser boxes).
    """
    rows: list[dict[str, Any]] = []
    for batch in iter_predictions(predictor, paths, indices=indices, batch_size=batch_size, workers=workers,
                                  gate=gate, heatmaps=heatmaps, boxes=boxes, box_maps=box_maps, progress=progress):
        rows += batch
    return rows


# -- output ---------------------------------------------------------------------------------------
CSV_FIXED = ["index", "path", "status", "error", "abnormality", "findings"]
CSV_TAIL = ["quality_ok", "quality_score", "quality_reason", "input_warning", "modality", "body_part", "view",
            "header_ok", "header_reason", "width", "height", "boxes", "box_method", "heatmaps", "runtime",
            "runtime_auroc_change"]


def output_format(out: str | Path) -> str:
    suffix = Path(out).suffix.lower()
    if suffix not in (".csv", ".jsonl"):
        raise PredictError(f"--out {out}: the file name must end in .csv or .jsonl (that picks the format)")
    return suffix[1:]


def write_results(rows: Sequence[dict], out: str | Path, label_names: Sequence[str],
                  runtime: dict | None = None) -> Path:
    """CSV (first line a ``#`` comment with the research-use notice; one probability column per finding) or
    JSONL (one object per row with a ``notice`` field), written atomically.

    ``runtime`` (:func:`cxrkit.deploy.runtime.runtime_metadata`): what ran the model; JSONL rows carry it whole,
    CSV rows as ``runtime`` (``backend-precision``) and ``runtime_auroc_change`` (the INT8 graph's recorded mean
    AUROC change on validation; empty for fp32), so a faster, quantised result is never anonymous."""
    out = Path(out)
    csv_runtime = {}
    if runtime:
        change = (runtime.get("accuracy_change") or {}).get("auroc_change")
        csv_runtime = {"runtime": f"{runtime.get('backend')}-{runtime.get('precision')}",
                       "runtime_auroc_change": "" if change is None else f"{change:.6f}"}
    fmt = output_format(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    with open(tmp, "w", newline="") as fh:
        if fmt == "jsonl":
            for row in rows:
                extra = {"runtime": runtime} if runtime else {}
                fh.write(json.dumps({**row, **extra, "notice": RESEARCH_NOTICE}) + "\n")
        else:
            fh.write(f"# {RESEARCH_NOTICE}\n")
            writer = csv.DictWriter(fh, fieldnames=CSV_FIXED + list(label_names) + CSV_TAIL, extrasaction="ignore")
            writer.writeheader()
            for row in rows:
                flat = {**row, **row.get("probs", {}), "findings": ";".join(row.get("findings", [])),
                        "heatmaps": ";".join(row.get("heatmaps", [])), **csv_runtime}
                if "boxes" in row:  # JSON in one cell: {finding: [[x, y, w, h, score], ...]}
                    flat["boxes"] = json.dumps(row["boxes"], separators=(",", ":"))
                writer.writerow(flat)
    os.replace(tmp, out)
    return out


def read_journal(path: Path) -> dict[int, dict]:
    """Rows already written to a part file (a resumed run skips them); a torn last line is ignored."""
    done: dict[int, dict] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
                done[int(row["index"])] = row
            except (json.JSONDecodeError, KeyError, ValueError):
                continue
    return done


def run_shard(predictor, paths: Sequence[Path], out: str | Path, *, rank: int = 0, world: int = 1,
              barrier: Callable[[], None] = lambda: None, **kwargs) -> Path | None:
    """Predict this rank's share (``paths[rank::world]``) into ``OUT.part<rank>of<world>.jsonl`` (appended batch
    by batch, so a rerun resumes), then rank 0 merges all parts in input order into ``out``."""
    out = Path(out)
    output_format(out)
    part = lambda r: out.with_name(f"{out.name}.part{r}of{world}.jsonl")  # noqa: E731
    mine = list(range(rank, len(paths), world))
    done = read_journal(part(rank))
    todo = [i for i in mine if i not in done or done[i]["path"] != str(paths[i])]
    out.parent.mkdir(parents=True, exist_ok=True)
    # rewrite the journal from its valid rows: a torn last line would otherwise corrupt the next append
    part(rank).write_text("".join(json.dumps(done[i]) + "\n" for i in mine if i in done and i not in todo))
    with open(part(rank), "a") as journal:
        for rows in iter_predictions(predictor, [paths[i] for i in todo], indices=todo, **kwargs):
            journal.write("".join(json.dumps(r) + "\n" for r in rows))
            journal.flush()
    barrier()
    if rank != 0:
        return None
    merged: dict[int, dict] = {}
    for r in range(world):
        merged.update(read_journal(part(r)))
    missing = [i for i in range(len(paths)) if i not in merged]
    if missing:
        raise PredictError(f"merging parts: {len(missing)} inputs have no row (first: {paths[missing[0]]}); rerun "
                           "the same command to resume")
    from cxrkit.deploy.runtime import runtime_metadata

    write_results([merged[i] for i in range(len(paths))], out, predictor.label_names, runtime_metadata(predictor))
    for r in range(world):
        part(r).unlink(missing_ok=True)
    return out
