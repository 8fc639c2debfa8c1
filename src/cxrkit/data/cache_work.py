"""The heavy, resumable parts of ``prepare``: parallel decode into the shared memmap, and in-place compaction.

Resumability rests on one rule: a chunk's done-marker (``.progress/chunk_NNNNNN.json``, holding the chunk's
per-row results) is written, fsynced and renamed into place only after the chunk's pixels were flushed. A re-run
re-decodes exactly the chunks without a marker, and decoding is deterministic, so the result is byte-identical to
an uninterrupted run however often it was killed.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import pickle
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cxrkit.data.cache_read import atomic_write_json, fsync_dir
from cxrkit.data.errors import ImageError
from cxrkit.data.transforms import fit_square

# Per-row result fields kept in a done-marker; bad rows carry zeros and the reason.
ROW_FIELDS = ("ok", "orig_w", "orig_h", "scale", "pad_x", "pad_y", "reason")
# Test hook: seconds each chunk sleeps after its pixels are written, so a test can SIGKILL `cxr prepare` mid-way.
DELAY_ENV = "CXRKIT_PREPARE_CHUNK_DELAY"


@dataclass
class DecodeJob:
    """What a worker needs to decode rows of ``dataset`` into the memmap at ``images_path``."""

    dataset: object  # a CXRDataset (its .read(i) decodes row i)
    images_path: str
    size: int
    delay: float = 0.0


def chunk_bounds(n: int, chunk_rows: int) -> list[tuple[int, int, int]]:
    """(chunk number, first row, end row) covering rows 0..n-1."""
    return [(c, s, min(s + chunk_rows, n)) for c, s in enumerate(range(0, n, chunk_rows))]


def marker_path(progress_dir: Path, chunk: int) -> Path:
    return progress_dir / f"chunk_{chunk:06d}.json"


def load_done(progress_dir: Path, bounds) -> dict[int, list]:
    """Per-row results of every chunk whose done-marker exists and matches its bounds."""
    done: dict[int, list] = {}
    for c, start, stop in bounds:
        path = marker_path(progress_dir, c)
        try:
            marker = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # absent (not finished) or torn by a crash before the rename: decode again
        if marker.get("start") == start and marker.get("stop") == stop and len(marker.get("rows", ())) == stop - start:
            done[c] = marker["rows"]
    return done


def decode_rows(job: DecodeJob, start: int, stop: int) -> list:
    """Decode + fit_square rows [start, stop) into the memmap; a refused image becomes a bad row, not an error."""
    images = np.load(job.images_path, mmap_mode="r+")
    rows = []
    for i in range(start, stop):
        try:
            image = job.dataset.read(i)
            if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 2):
                raise ImageError(job.dataset.table.at[i, "path"],
                                 f"reader returned {getattr(image, 'shape', None)} "
                                 f"{getattr(image, 'dtype', type(image).__name__)}, not a uint8 H x W image")
            fitted, fit = fit_square(image, job.size)
            images[i] = fitted
            h, w = image.shape
            rows.append([True, int(w), int(h), float(fit.scale), float(fit.pad_x), float(fit.pad_y), ""])
        except ImageError as exc:
            rows.append([False, 0, 0, 0.0, 0.0, 0.0, exc.reason])
    images.flush()
    del images
    if job.delay:
        time.sleep(job.delay)
    return rows


# Set once per pool worker process by _init_worker: the dataset is shipped to each worker once, not per chunk.
_WORKER_JOB: DecodeJob | None = None


def _die_with_parent() -> None:
    # A SIGKILLed `cxr prepare` must not leave workers writing into a cache that a re-run is finishing.
    if sys.platform.startswith("linux"):
        try:
            import ctypes
            import signal

            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass


def init_decode_process() -> None:
    """Set up a pool process: die with the parent, leave Ctrl-C to the parent, one OpenCV thread per process."""
    import signal

    import cv2

    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent catches it and terminates the pool
    cv2.setNumThreads(1)  # as many processes as cores already


def _init_worker(job_file: str) -> None:
    global _WORKER_JOB
    init_decode_process()
    with open(job_file, "rb") as f:
        _WORKER_JOB = pickle.load(f)  # written by run_chunks in this cache's .progress folder, moments ago


def _work(task: tuple[int, int, int]) -> tuple[int, list]:
    c, start, stop = task
    return c, decode_rows(_WORKER_JOB, start, stop)


def run_chunks(job: DecodeJob, todo, progress_dir: Path, *, workers: int, total: int, done_rows: int,
               progress: bool = True) -> dict[int, list]:
    """Decode the chunks in ``todo`` on ``workers`` processes, writing each chunk's done-marker as it finishes."""
    from tqdm.auto import tqdm

    results: dict[int, list] = {}
    bounds = {c: (c, s, e) for c, s, e in todo}
    bad = 0
    with tqdm(total=total, initial=done_rows, unit="img", desc="prepare", disable=not progress,
              dynamic_ncols=True) as bar:
        def finished(c: int, rows: list) -> None:
            nonlocal bad
            _, start, stop = bounds[c]
            atomic_write_json(marker_path(progress_dir, c), {"start": start, "stop": stop, "fields": ROW_FIELDS,
                                                             "rows": rows}, sync_dir=False)
            results[c] = rows
            bad += sum(1 for r in rows if not r[0])
            bar.update(len(rows))
            if bad:
                bar.set_postfix(bad=bad)

        if workers <= 1 or len(todo) <= 1:
            for c, start, stop in todo:
                finished(c, decode_rows(job, start, stop))
        else:
            # spawn, not fork: a parent that already ran OpenCV/BLAS thread pools (phantom generation, a notebook)
            # would deadlock children forked mid-lock.
            # The job (with the dataset's table) goes to the workers through a file, not initargs: spawn writes
            # initargs into each child's pipe before starting the next child, so a payload larger than the pipe
            # buffer makes the children boot one after another (measured: 16 workers, 15 s of a 21 s prepare).
            job_file = progress_dir / f"job.{os.getpid()}.pickle"
            with open(job_file, "wb") as f:
                pickle.dump(job, f, protocol=pickle.HIGHEST_PROTOCOL)
            try:
                with mp.get_context("spawn").Pool(workers, initializer=_init_worker, initargs=(str(job_file),)) as pool:
                    for c, rows in pool.imap_unordered(_work, todo):
                        finished(c, rows)
            finally:
                job_file.unlink(missing_ok=True)
    return results


# -- compaction -----------------------------------------------------------------------------------------------


def _header(path: Path):
    """(shape, dtype, data offset, header prefix length) of a .npy file."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(f)
        if fortran:
            raise ValueError(f"{path} is Fortran-ordered; cxrkit never writes that")
        return shape, dtype, f.tell(), 10 if version == (1, 0) else 12


def shrink_npy(path: Path, n_rows: int) -> None:
    """Rewrite the header of a C-ordered .npy to ``n_rows`` leading rows and truncate the file (idempotent)."""
    shape, dtype, offset, prefix = _header(path)
    new_shape = (n_rows, *shape[1:])
    if shape != new_shape:
        text = "{'descr': %r, 'fortran_order': False, 'shape': %r, }" % (np.lib.format.dtype_to_descr(dtype),
                                                                          new_shape)
        room = offset - prefix - 1  # same header length, so the data offset (and its alignment) stays put
        if len(text) > room:
            raise ValueError(f"cannot shrink {path}: header does not fit")
        with open(path, "r+b") as f:
            f.seek(prefix)
            f.write((text.ljust(room) + "\n").encode("latin1"))
            f.flush()
            os.fsync(f.fileno())
    row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
    os.truncate(path, offset + n_rows * row_bytes)


def compact(images_path: Path, ok: np.ndarray, progress_dir: Path, *, block_bytes: int = 32 << 20,
            progress: bool = False) -> None:
    """Move the good rows of the memmap down over the bad ones (order kept), then truncate to the good rows.

    Crash-safe and resumable: each block of rows is first copied to a fsynced journal
    (``.progress/compact_block.npy``) and ``compact.json`` records which destination rows are final, so a killed
    compaction replays the journalled block and carries on; source rows beyond the final ones are never touched.
    """
    from tqdm.auto import tqdm

    good = np.flatnonzero(ok)
    n_good = len(good)
    state_path, journal = progress_dir / "compact.json", progress_dir / "compact_block.npy"
    if (progress_dir / "compacted").exists():
        shrink_npy(images_path, n_good)
        return
    images = np.load(images_path, mmap_mode="r+")
    moved = np.flatnonzero(good != np.arange(n_good))
    done = int(moved[0]) if len(moved) else n_good
    if state_path.exists():
        state = json.loads(state_path.read_text())
        done = int(state["done"])
        if state.get("block") and journal.exists():
            k0, k1 = state["block"]
            images[k0:k1] = np.load(journal)
            images.flush()
            done = k1
    block_rows = max(1, block_bytes // max(1, images[0].nbytes))
    with tqdm(total=n_good, initial=done, unit="img", desc="compact", disable=not progress, leave=False) as bar:
        while done < n_good:
            k0, k1 = done, min(done + block_rows, n_good)
            block = np.ascontiguousarray(images[good[k0:k1]])
            tmp = journal.with_name(journal.name + ".tmp")
            with open(tmp, "wb") as f:
                np.save(f, block)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, journal)
            atomic_write_json(state_path, {"done": k0, "block": [k0, k1]})
            images[k0:k1] = block
            images.flush()
            atomic_write_json(state_path, {"done": k1})
            done = k1
            bar.update(k1 - k0)
    del images
    atomic_write_json(progress_dir / "compacted", {"n_good": n_good})
    journal.unlink(missing_ok=True)
    shrink_npy(images_path, n_good)
    fsync_dir(images_path.parent)


def preallocate(path: Path) -> None:
    """Reserve the memmap's disk blocks now: a full disk then fails here, cleanly, not as SIGBUS in a worker."""
    if not hasattr(os, "posix_fallocate"):
        return
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
    except OSError as exc:
        import errno

        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise
    finally:
        os.close(fd)


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)
