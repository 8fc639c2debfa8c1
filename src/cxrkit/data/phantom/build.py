"""``generate``: write a phantom set to disk, in chunks, resumably, on one or several processes."""
from __future__ import annotations

import ctypes
import json
import math
import os
import shutil
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

from cxrkit.data.errors import CxrError
from cxrkit.data.labels import NIH_FINDINGS
from cxrkit.data.phantom import layout
from cxrkit.data.phantom.difficulty import Difficulty, resolve_difficulty
from cxrkit.data.phantom.population import DEFAULT_ENRICH, FilmSpec, sample_population
from cxrkit.data.phantom.render import check_size, render_film

GENERATOR_VERSION = 1  # bump whenever the same settings would draw different pixels
CHUNK = 128
JOURNAL = ".phantom_progress.jsonl"  # one line per finished chunk; removed when the set is complete


class PhantomError(CxrError):
    """A phantom set cannot be written where or how it was asked."""


@dataclass(frozen=True)
class PhantomSummary:
    """What :func:`generate` wrote."""

    out_dir: Path
    images_dir: Path
    masks_dir: Path
    table_csv: Path
    bbox_csv: Path
    readme: Path
    marker: Path
    n_images: int
    n_patients: int
    n_boxes: int
    size: int
    seed: int
    enrich: float
    difficulty: Difficulty
    label_counts: dict[str, int] = field(default_factory=dict)
    reused: int = 0  # images found already written by an interrupted run with the same settings


def _settings(n: int, size: int, seed: int, diff: Difficulty, enrich: float) -> dict:
    return {"generator": "cxrkit.data.phantom", "generator_version": GENERATOR_VERSION, "n": n, "size": size,
            "seed": seed, "difficulty": diff.to_dict(), "enrich": enrich}


def _check_args(n, seed, workers, enrich) -> None:
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise PhantomError(f"n={n!r}: a phantom set needs at least 1 image (e.g. --n 2000)")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise PhantomError(f"seed={seed!r} must be an integer >= 0")
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise PhantomError(f"workers={workers!r} must be an integer >= 1")
    if not isinstance(enrich, (int, float)) or not 0 <= enrich <= 0.3:
        raise PhantomError(f"enrich={enrich!r} must be in [0, 0.3] (minimum prevalence per finding; 0 = real NIH)")


def _prepare_folder(out: Path, settings: dict, overwrite: bool) -> bool:
    """Make ``out`` ready; True when an interrupted or finished run with the same settings can be resumed."""
    marker = out / layout.MARKER
    if out.exists() and not out.is_dir():
        raise PhantomError(f"{out} exists and is not a folder; choose a folder path for the phantom set")
    if not out.exists() or not any(out.iterdir()):
        out.mkdir(parents=True, exist_ok=True)
        return False
    if not marker.is_file():
        raise PhantomError(f"{out} is not empty and holds no phantom set ({layout.MARKER} missing); choose an empty "
                           "or new folder")
    try:
        old = json.loads(marker.read_text())
    except (OSError, ValueError) as exc:
        raise PhantomError(f"{marker} is unreadable ({exc}); delete the folder and generate again") from exc
    same = {k: old.get(k) for k in settings} == settings
    if same and not overwrite:
        return True
    if not overwrite:
        raise PhantomError(f"{out} holds a phantom set made with other settings ({_diff(old, settings)}); choose "
                           "another folder, rerun with the same settings to resume, or pass overwrite=True "
                           "(--overwrite)")
    for name in (layout.IMAGES, layout.MASKS):
        shutil.rmtree(out / name, ignore_errors=True)
    for name in (layout.TABLE, layout.BBOX, layout.README, layout.MARKER, JOURNAL):
        (out / name).unlink(missing_ok=True)
    return False


def _diff(old: dict, new: dict) -> str:
    return ", ".join(f"{k}: {old.get(k)!r} -> {v!r}" for k, v in new.items() if old.get(k) != v)


def _read_journal(path: Path) -> dict[int, dict]:
    """Finished chunks of an interrupted run: chunk -> {film index: boxes}. A torn last line is ignored."""
    done: dict[int, dict] = {}
    if not path.is_file():
        return done
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
            done[int(rec["chunk"])] = {int(k): {n: tuple(b) for n, b in v.items()} for k, v in rec["boxes"].items()}
        except (ValueError, KeyError, TypeError):
            continue
    return done


def _render_chunk(job: tuple) -> tuple[int, dict]:
    """Worker: draw and write one chunk of films; returns (chunk, {film index: {finding: box}})."""
    chunk, out, specs, size, diff = job
    images, masks = Path(out) / layout.IMAGES, Path(out) / layout.MASKS
    boxes = {}
    for spec in specs:
        film = render_film(spec, size, diff)
        layout.write_png(images / spec.image_id, film.image, layout.IMAGE_PNG)
        layout.write_png(masks / spec.image_id, film.lung_mask, layout.MASK_PNG)
        boxes[spec.index] = film.boxes
    return chunk, boxes


def _tune_allocator() -> None:
    """Keep freed film-sized buffers in the heap instead of returning them to the kernel.

    glibc serves 256 KB arrays with mmap and trims the heap eagerly, so every film faulted ~3 MB of fresh pages
    back in (~1 ms of system time per 256 px film, 15-20% of the total). Raising the mmap and trim thresholds
    removes that. Allocation tuning only (drawn pixels are unchanged); a no-op where glibc is absent.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 8 << 20)    # M_MMAP_THRESHOLD
        libc.mallopt(-1, 64 << 20)   # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


def _worker_init() -> None:
    import cv2

    cv2.setNumThreads(1)  # one process per core already; OpenCV's own threads would oversubscribe
    _tune_allocator()


def generate(out_dir: os.PathLike | str, n: int, size: int = 256, seed: int = 0,
             difficulty: float | str | Difficulty | None = None, workers: int = 1, progress: bool = True, *,
             enrich: float = DEFAULT_ENRICH, overwrite: bool = False) -> PhantomSummary:
    """Write ``n`` phantom chest films to ``out_dir`` in the NIH ChestX-ray14 layout.

    Args:
        out_dir: a new or empty folder (or one holding an interrupted run with the same settings, which is
            resumed: finished chunks are kept).
        n: number of images (>= 1).
        size: film side in pixels (32..4096).
        seed: the set's seed; the same settings give byte-identical files whatever ``workers`` is.
        difficulty: a level in [0, 1] (0 easy, 0.5 default, 1 hard), a preset name (``easy``, ``default``,
            ``hard``) or a :class:`Difficulty`.
        workers: processes drawing in parallel.
        progress: show a progress bar.
        enrich: minimum prevalence per finding (default 0.05, so even Hernia has ~5% positives for training
            demos); 0 follows the real NIH label distribution.
        overwrite: replace a phantom set made with other settings.

    Returns:
        :class:`PhantomSummary` with the paths and counts.
    """
    _check_args(n, seed, workers, enrich)
    size = check_size(size)
    diff = resolve_difficulty(difficulty)
    out = Path(out_dir)
    settings = _settings(n, size, seed, diff, float(enrich))
    resumable = _prepare_folder(out, settings, overwrite)
    marker = out / layout.MARKER
    specs = sample_population(n, seed, float(enrich))
    n_patients = specs[-1].patient_index + 1
    info = {**settings, "box_frame": size, "synthetic": True, "source": "phantom", "images": layout.IMAGES,
            "masks": layout.MASKS, "bbox_label_aliases": {"Infiltrate": "Infiltration"}}
    if resumable and _complete(out, marker, specs):
        return _summary(out, specs, size, seed, float(enrich), diff, json.loads(marker.read_text())["n_boxes"],
                        reused=n)
    (out / layout.IMAGES).mkdir(exist_ok=True)
    (out / layout.MASKS).mkdir(exist_ok=True)
    layout.write_text(marker, layout.marker_text({**info, "state": "in_progress"}))

    journal = out / JOURNAL
    done = _read_journal(journal) if resumable else {}
    if done:  # trust a journalled chunk only while its files are still there
        on_disk = {e.name for e in os.scandir(out / layout.IMAGES)} & {e.name for e in os.scandir(out / layout.MASKS)}
        done = {c: b for c, b in done.items() if all(specs[i].image_id in on_disk for i in b)}
    chunks = math.ceil(n / CHUNK)
    todo = [c for c in range(chunks) if c not in done]
    reused = sum(len(done[c]) for c in done)
    jobs = ((c, str(out), specs[c * CHUNK:(c + 1) * CHUNK], size, diff) for c in todo)
    from tqdm import tqdm

    bar = tqdm(total=n, initial=reused, desc="phantom films", unit="img", disable=not progress, smoothing=0.05)
    with open(journal, "a", encoding="utf-8") as log:
        def record(chunk: int, boxes: dict) -> None:
            done[chunk] = boxes
            log.write(json.dumps({"chunk": chunk, "boxes": {str(k): v for k, v in boxes.items()}}) + "\n")
            log.flush()
            bar.update(len(boxes))

        if workers == 1 or len(todo) <= 1:
            if len(todo) > 1:
                _tune_allocator()
            for job in jobs:
                record(*_render_chunk(job))
        else:
            with ProcessPoolExecutor(max_workers=min(workers, len(todo)), mp_context=get_context("spawn"),
                                     initializer=_worker_init) as pool:
                for chunk, boxes in pool.map(_render_chunk, jobs, chunksize=1):
                    record(chunk, boxes)
    bar.close()

    boxes = {i: b for c in done.values() for i, b in c.items()}
    n_boxes = sum(len(b) for b in boxes.values())
    counts = _label_counts(specs)
    layout.write_text(out / layout.TABLE, layout.table_text(specs, size))
    layout.write_text(out / layout.BBOX, layout.bbox_text(specs, boxes))
    layout.write_text(out / layout.README, layout.readme_text(info, counts, n_patients, n_boxes))
    layout.write_text(marker, layout.marker_text({**info, "state": "complete", "n_patients": n_patients,
                                                  "n_boxes": n_boxes}))
    journal.unlink(missing_ok=True)
    return _summary(out, specs, size, seed, float(enrich), diff, n_boxes, reused=reused)


def _complete(out: Path, marker: Path, specs: list[FilmSpec]) -> bool:
    try:
        info = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    if info.get("state") != "complete":
        return False
    names = {s.image_id for s in specs}
    for sub in (layout.IMAGES, layout.MASKS):
        folder = out / sub
        if not folder.is_dir() or not names <= {e.name for e in os.scandir(folder)}:
            return False
    return all((out / f).is_file() for f in (layout.TABLE, layout.BBOX, layout.README))


def _label_counts(specs: list[FilmSpec]) -> dict[str, int]:
    counts = dict.fromkeys(NIH_FINDINGS, 0)
    for s in specs:
        for f in s.findings:
            counts[f] += 1
    counts["No Finding"] = sum(1 for s in specs if not s.findings)
    return counts


def _summary(out: Path, specs, size, seed, enrich, diff, n_boxes, reused) -> PhantomSummary:
    return PhantomSummary(
        out_dir=out, images_dir=out / layout.IMAGES, masks_dir=out / layout.MASKS, table_csv=out / layout.TABLE,
        bbox_csv=out / layout.BBOX, readme=out / layout.README, marker=out / layout.MARKER, n_images=len(specs),
        n_patients=specs[-1].patient_index + 1, n_boxes=n_boxes, size=size, seed=seed, enrich=enrich,
        difficulty=diff, label_counts=_label_counts(specs), reused=reused)
