"""``prepare``: decode every image of a dataset once into a fixed-size, memory-mapped, resumable cache.

Order of work (each step safe to kill; a re-run with the same source and size continues):
plan (splits + leakage check) -> partial manifest -> preallocated images.npy -> chunks decoded in parallel, each
with a done-marker -> bad rows compacted away -> index/boxes/bad_files -> leakage check -> content hash ->
complete manifest. See docs/data.md.
"""
from __future__ import annotations

import errno
import hashlib
import io
import logging
import os
import shutil
import sys
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from cxrkit.data import cache_work as work
from cxrkit.data.cache_read import (BAD_FILES, BOXES, CACHE_FILES, CACHE_FORMAT, CACHE_FORMAT_VERSION, IMAGES, INDEX,
                                    MANIFEST, PROGRESS, SPLITS, Cache, atomic_write_bytes, atomic_write_json,
                                    open_cache, read_manifest, sha256_files)
from cxrkit.data.errors import CacheError

log = logging.getLogger(__name__)

# Identity of a cache: a folder holding a cache that differs in any of these is refused (unless --overwrite).
IDENTITY = ("source", "size", "label_names")


SPLIT_POLICIES = ("auto", "patient", "none")


def prepare(source, out, *, size: int = 256, format: str = "auto", split_seed: int = 0,
            fractions=(0.7, 0.1, 0.2), split: str = "auto", workers: int | None = None, overwrite: bool = False,
            progress: bool = True, chunk_rows: int = 64, **dataset_kw) -> Cache:
    """Decode + :func:`~cxrkit.data.transforms.fit_square` every image of ``source`` once into the cache ``out``.

    Args:
        source: a dataset folder or table, opened with :func:`cxrkit.data.open_dataset` (``format``, ``dataset_kw``).
        out: the cache folder (created). A partial cache of the same source/size/labels there is resumed; a
            different one is refused unless ``overwrite``.
        size: side of the square images, in pixels.
        split_seed, fractions: patient split (the official split wins where the dataset ships one).
        split: ``"auto"`` (the official split where the source ships one, else a patient split), ``"patient"``
            (a patient split, official lists ignored) or ``"none"`` (every image ``test``: an external set that
            is only ever scored).
        workers: decoding processes (default: all cores).
        chunk_rows: images per resumable unit of work (kept from the first run when resuming).

    Unreadable images are listed in ``bad_files.csv`` and left out. Returns the opened :class:`Cache`.
    Raises CacheError (folder holds another cache, nothing decodable, disk full), LeakageError, DatasetError.
    """
    if not isinstance(size, int) or not 16 <= size <= 4096:
        raise CacheError(f"size={size!r}: the cache image side must be an integer from 16 to 4096 pixels")
    if chunk_rows < 1:
        raise CacheError(f"chunk_rows={chunk_rows}: must be at least 1")
    from cxrkit.data.datasets import open_dataset

    out = Path(out)
    dataset = open_dataset(source, format=format, **dataset_kw)
    if len(dataset) == 0:
        raise CacheError(f"the dataset at {source} has no images to prepare")
    if split not in SPLIT_POLICIES:
        raise CacheError(f"split={split!r}: choose one of {', '.join(SPLIT_POLICIES)}")
    table, split_info = _plan(dataset, split_seed, fractions, split)
    request = {"source": _source_id(source, dataset), "reader": type(dataset).__name__, "size": size,
               "label_names": list(dataset.label_names), "split_seed": split_seed, "fractions": list(fractions),
               "split": split, "n_rows": len(table), "plan_hash": _plan_hash(table, dataset.label_names)}
    out.mkdir(parents=True, exist_ok=True)
    with _exclusive(out):
        try:
            return _prepare_locked(dataset, table, split_info, request, out, format=format, chunk_rows=chunk_rows,
                                   workers=workers or work.default_workers(), overwrite=overwrite,
                                   progress=progress)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                need = len(table) * size * size
                raise CacheError(f"disk full while writing the cache in {out} (images.npy alone needs "
                                 f"{need / 1e9:.2f} GB): free space or pick another folder, then run cxr prepare "
                                 "again; finished chunks are kept and it resumes") from exc
            raise


def _prepare_locked(dataset, table, split_info, request, out: Path, *, format, chunk_rows, workers, overwrite,
                    progress) -> Cache:
    manifest = _claim_folder(out, request, overwrite)
    if manifest is not None and manifest.get("complete"):
        log.info("%s already holds this cache, complete; nothing to do", out)
        shutil.rmtree(out / PROGRESS, ignore_errors=True)
        return open_cache(out)
    progress_dir, images_path = out / PROGRESS, out / IMAGES
    if manifest is None:
        manifest = _start(out, dataset, request, format=format, chunk_rows=chunk_rows)
    chunk_rows = int(manifest["chunk_rows"])
    size, n = request["size"], request["n_rows"]
    if not (progress_dir / "compacted").exists() and not _shape_ok(images_path, (n, size, size)):
        shutil.rmtree(progress_dir, ignore_errors=True)  # markers without their pixels are worthless
        np.lib.format.open_memmap(images_path, mode="w+", dtype=np.uint8, shape=(n, size, size)).flush()
    progress_dir.mkdir(exist_ok=True)
    work.preallocate(images_path)

    bounds = work.chunk_bounds(n, chunk_rows)
    done = work.load_done(progress_dir, bounds)
    todo = [b for b in bounds if b[0] not in done]
    if done and todo:
        log.info("resuming %s: %d of %d chunks already done", out, len(done), len(bounds))
    if todo:
        job = work.DecodeJob(dataset, str(images_path), size, float(os.environ.get(work.DELAY_ENV) or 0))
        done.update(work.run_chunks(job, todo, progress_dir, workers=min(workers, len(todo)), total=n,
                                    done_rows=sum(len(r) for r in done.values()), progress=progress))
    results = pd.DataFrame([r for c, _, _ in bounds for r in done[c]], columns=list(work.ROW_FIELDS))
    ok = results["ok"].to_numpy(dtype=bool)
    bad_files = _bad_files(table, results, dataset)
    if not ok.any():
        atomic_write_bytes(out / BAD_FILES, bad_files.to_csv(index=False).encode())
        raise CacheError(f"none of the {n} images could be decoded (e.g. {bad_files['reason'].iloc[0]}); "
                         f"see {out / BAD_FILES}")
    if not ok.all():
        work.compact(images_path, ok, progress_dir, progress=progress)

    index = _index(table, results, dataset, size)[ok].reset_index(drop=True)
    boxes = _boxes(dataset, table, results, ok, index)
    from cxrkit.data.splits import check_leakage

    check_leakage(index, split_col="split", patient_col="patient_id")
    atomic_write_bytes(out / INDEX, _parquet(index))
    atomic_write_bytes(out / BOXES, _parquet(boxes))
    atomic_write_bytes(out / BAD_FILES, bad_files.to_csv(index=False).encode())
    manifest.update(
        complete=True,
        n_images=len(index),
        n_bad=int((~ok).sum()),
        n_problems=len(bad_files),
        n_missing_at_open=int(getattr(dataset, "n_missing", 0) or 0),
        split={**split_info, "counts": {s: int((index["split"] == s).sum()) for s in SPLITS},
               "patients": {s: int(index.loc[index["split"] == s, "patient_id"].nunique()) for s in SPLITS}},
        content_hash=sha256_files([images_path, out / INDEX], progress=progress),
        completed=_now(),
    )
    atomic_write_json(out / MANIFEST, manifest)
    shutil.rmtree(progress_dir, ignore_errors=True)
    return open_cache(out)


# -- planning -------------------------------------------------------------------------------------------------


def _plan(dataset, seed: int, fractions, policy: str = "auto") -> tuple[pd.DataFrame, dict]:
    """The dataset table with a ``split`` column; the leakage check runs here already, before any decoding."""
    from cxrkit.data.splits import _check_fractions, check_leakage, official_or_patient_split, patient_split

    _check_fractions(fractions)
    table = dataset.table.copy()
    listed = table["official_split"].notna() if "official_split" in table else pd.Series(False, index=table.index)
    official = policy == "auto" and bool(listed.any())
    n_unlisted = int((~listed).sum()) if official else 0
    if policy == "none":
        split = np.full(len(table), "test", dtype=object)
    elif official:
        split = official_or_patient_split(table, dataset.label_names, fractions=fractions, seed=seed)
        if n_unlisted:
            # e.g. NIH images missing from both train_val_list.txt and test_list.txt: they can only go to the
            # splits carved by patient (train/val), which users should hear about rather than find out later
            log.warning("%d of %d images are in none of the source's official split lists; they were split by "
                        "patient into the splits the source does not fix (e.g. train/val, never the official test)",
                        n_unlisted, len(table))
    else:
        split = patient_split(table, dataset.label_names, fractions=fractions, seed=seed)
    table["split"] = np.asarray(split, dtype=object)
    check_leakage(table, split_col="split", patient_col="patient_id")
    name = {"none": "none", "patient": "patient"}.get(policy, "official+patient" if official else "patient")
    info = {"policy": name, "seed": seed, "fractions": [float(f) for f in fractions]}
    if official:
        info["n_unlisted"] = n_unlisted
    return table, info


def _plan_hash(table: pd.DataFrame, label_names) -> str:
    cols = ["image_id", "patient_id", "path", "split", *label_names]
    return "sha256:" + hashlib.sha256(table[cols].to_csv(index=False).encode()).hexdigest()


def _claim_folder(out: Path, request: dict, overwrite: bool) -> dict | None:
    """The manifest of a resumable cache of the same request in ``out``, or None for a fresh start.

    Refuses (CacheError) a folder holding another cache or unrelated files, unless ``overwrite``; overwrite only
    ever deletes cache files (:data:`CACHE_FILES`), never anything else in the folder.
    """
    manifest = read_manifest(out)
    if manifest is not None and not overwrite:
        old = manifest.get("request", {})
        state = "complete" if manifest.get("complete") else "partial"
        diff = [k for k in IDENTITY if old.get(k) != request[k]]
        if diff:
            raise CacheError(f"{out} already holds a {state} cache of {old.get('source')} at size {old.get('size')} "
                             f"with {len(old.get('label_names') or ())} labels (differs in {', '.join(diff)}); "
                             "pass --overwrite to replace it, or pick another folder")
        for key, what in (("split_seed", "split seed"), ("fractions", "split fractions"), ("split", "split policy"),
                          ("reader", "reader"), ("plan_hash", "label table / file list")):
            if old.get(key, "auto" if key == "split" else None) != request[key]:  # caches before --split: auto
                raise CacheError(f"{out} holds a {state} cache of the same source but a different {what} "
                                 f"({old.get(key)} vs {request[key]}); the source changed or other options were "
                                 "given: pass --overwrite to rebuild it, or pick another folder")
        return manifest
    if manifest is None:
        others = [p.name for p in out.iterdir()]
        if others and not overwrite:
            raise CacheError(f"{out} is not empty ({', '.join(sorted(others)[:5])}) and holds no cxrkit cache; "
                             "pick an empty or new folder, or pass --overwrite to write the cache beside those files")
    for name in CACHE_FILES:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    return None


def _start(out: Path, dataset, request: dict, *, format: str, chunk_rows: int) -> dict:
    """Write the partial manifest that marks ``out`` as this request's cache (before any pixels)."""
    manifest = {
        "format": CACHE_FORMAT,
        "format_version": CACHE_FORMAT_VERSION,
        "complete": False,
        "source": {"path": request["source"], "format": format, "reader": request["reader"],
                   "dataset": repr(dataset), "name": getattr(dataset, "source", None)},
        "label_names": request["label_names"],
        "label_policy": _label_policy(dataset),
        "size": request["size"],
        "chunk_rows": chunk_rows,
        "request": request,
        "versions": _versions(),
        "created": _now(),
    }
    atomic_write_json(out / MANIFEST, manifest)
    return manifest


def _label_policy(dataset) -> dict | None:
    """How uncertain / blank labels became targets, for readers that decide it (CheXpert's per-class policy)."""
    policies = getattr(dataset, "policies", None)
    if policies is None:
        return None
    return {"uncertainty": dict(policies), "blank": getattr(dataset, "blank", None)}


# -- tables ---------------------------------------------------------------------------------------------------


def _index(table: pd.DataFrame, results: pd.DataFrame, dataset, size: int) -> pd.DataFrame:
    """index.parquet rows for every planned row (bad rows included; the caller keeps the good ones)."""
    orig_w = results["orig_w"].to_numpy(dtype=np.float64)
    orig_h = results["orig_h"].to_numpy(dtype=np.float64)
    scale = results["scale"].to_numpy(dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        kx = _frame_ratio(table["frame_w"], orig_w)
        ky = _frame_ratio(table["frame_h"], orig_h)
        spacing_x = table["spacing_x"].to_numpy(dtype=np.float64) * kx / scale
        spacing_y = table["spacing_y"].to_numpy(dtype=np.float64) * ky / scale
    source = table["source"] if "source" in table else pd.Series(dataset.source, index=table.index)
    index = pd.DataFrame({"image_id": table["image_id"].astype(str), "patient_id": table["patient_id"].astype(str),
                          "split": table["split"].astype(str)})
    for name in dataset.label_names:
        index[name] = table[name].to_numpy(dtype=np.float32)
    index["age"] = table["age"].to_numpy(dtype=np.float64)
    index["sex"] = table["sex"].where(table["sex"].notna(), None).astype(object)
    index["view"] = table["view"].where(table["view"].notna(), None).astype(object)
    index["source"] = source.astype(str).to_numpy()
    index["path"] = table["path"].astype(str).to_numpy()
    index["spacing_x"] = np.where(np.isfinite(spacing_x), spacing_x, np.nan)
    index["spacing_y"] = np.where(np.isfinite(spacing_y), spacing_y, np.nan)
    index["orig_w"] = results["orig_w"].to_numpy(dtype=np.int32)
    index["orig_h"] = results["orig_h"].to_numpy(dtype=np.int32)
    index["ok"] = results["ok"].to_numpy(dtype=bool)
    return index


def _frame_ratio(frame: pd.Series, actual: np.ndarray) -> np.ndarray:
    """frame size / decoded size: how much bigger a decoded pixel is than a frame pixel (1 when no frame)."""
    frame = frame.to_numpy(dtype=np.float64)
    return np.where(np.isfinite(frame) & (frame > 0), frame / actual, 1.0)


def _boxes(dataset, table: pd.DataFrame, results: pd.DataFrame, ok: np.ndarray, index: pd.DataFrame) -> pd.DataFrame:
    """Boxes moved from the table's frame into cache pixels (frame -> decoded size -> SquareFit)."""
    cols = ["row", "image_id", "label", "x", "y", "w", "h"]
    boxes = dataset.boxes
    if boxes is None or not len(boxes):
        return pd.DataFrame({c: pd.Series(dtype=t) for c, t in zip(cols, ("int64", "str", "str", *["float64"] * 4))})
    final_row = np.cumsum(ok) - 1  # planned row -> row in the compacted cache
    with np.errstate(divide="ignore", invalid="ignore"):  # bad rows (size 0) are dropped below
        kx = 1 / _frame_ratio(table["frame_w"], results["orig_w"].to_numpy(np.float64))
        ky = 1 / _frame_ratio(table["frame_h"], results["orig_h"].to_numpy(np.float64))
    per_row = pd.DataFrame({"image_id": table["image_id"].astype(str), "row": final_row, "ok": ok, "kx": kx,
                            "ky": ky, "scale": results["scale"], "pad_x": results["pad_x"],
                            "pad_y": results["pad_y"]})
    b = boxes.assign(image_id=boxes["image_id"].astype(str)).merge(per_row[per_row["ok"]], on="image_id", how="inner")
    out = pd.DataFrame({
        "row": b["row"].astype(np.int64),
        "image_id": b["image_id"],
        "label": b["label"].astype(str),
        "x": b["x"] * b["kx"] * b["scale"] + b["pad_x"],
        "y": b["y"] * b["ky"] * b["scale"] + b["pad_y"],
        "w": b["w"] * b["kx"] * b["scale"],
        "h": b["h"] * b["ky"] * b["scale"],
    })
    return out.sort_values(["row", "label", "x", "y"], kind="stable").reset_index(drop=True)[cols]


def _bad_files(table: pd.DataFrame, results: pd.DataFrame, dataset) -> pd.DataFrame:
    """Refused images (and files a reader set aside when opening the dataset, if it reports them)."""
    bad = ~results["ok"].to_numpy(dtype=bool)
    rows = pd.DataFrame({"path": table["path"].astype(str)[bad].to_numpy(),
                         "image_id": table["image_id"].astype(str)[bad].to_numpy(),
                         "reason": results["reason"][bad].to_numpy()})
    problems = getattr(dataset, "problems", None)
    if problems is not None and len(problems):
        p = pd.DataFrame(problems)
        extra = pd.DataFrame({"path": p.get("path", pd.Series([""] * len(p))).astype(str).to_numpy(),
                              "image_id": p.get("image_id", pd.Series([""] * len(p))).fillna("").astype(str).to_numpy(),
                              "reason": p.get("reason", pd.Series([""] * len(p))).astype(str).to_numpy()})
        rows = pd.concat([rows, extra], ignore_index=True)
    return rows


def _parquet(df: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    return buf.getvalue()


# -- small helpers ----------------------------------------------------------------------------------------------


def _source_id(source, dataset) -> str:
    """What identifies the source: its resolved path(s); for a dataset object, its root folder or repr."""
    if isinstance(source, (str, os.PathLike)):
        return str(Path(source).resolve())
    if isinstance(source, (list, tuple)):
        return " + ".join(_source_id(s, s) for s in source)
    root = getattr(dataset, "root", None)
    return str(Path(root).resolve()) if root is not None else repr(dataset)


def _shape_ok(path: Path, shape: tuple) -> bool:
    try:
        arr = np.load(path, mmap_mode="r")
    except (OSError, ValueError):
        return False
    return arr.shape == shape and arr.dtype == np.uint8


@contextmanager
def _exclusive(out: Path):
    """Hold an exclusive lock on the cache folder (two prepares into one folder would corrupt each other)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    fd = os.open(out, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            raise CacheError(f"another cxr prepare is writing to {out}; wait for it or pick another folder") from exc
        yield
    finally:
        os.close(fd)


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    def of(dist: str) -> str | None:  # metadata, not import: importing pydicom alone costs ~1 s
        try:
            return version(dist)
        except PackageNotFoundError:
            return None

    import cv2

    import cxrkit

    return {"cxrkit": cxrkit.__version__, "numpy": np.__version__, "opencv": cv2.__version__,
            "pydicom": of("pydicom"), "pandas": pd.__version__, "pyarrow": of("pyarrow"),
            "python": sys.version.split()[0]}


# The only manifest.json fields that differ between two runs of the same request (resumed or not): wall-clock
# times. docs/data.md's resume guarantee names them.
MANIFEST_TIMESTAMPS = ("created", "completed")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
