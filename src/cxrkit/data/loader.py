"""CacheLoader: batches straight from a prepared cache's memmap, fast enough that the GPU never waits.

Per batch: sort the batch's row numbers (sequential memmap reads), gather them with one ``numpy.take`` into a
buffer (pinned and double-buffered when the target is CUDA), ``torch.from_numpy``, non-blocking ``.to(device)``.
A background thread prepares the next batch while the caller works on this one (numpy releases the GIL while
copying, so one core keeps up). No worker processes, no per-sample Python.
"""
from __future__ import annotations

import math
import queue
import threading

import numpy as np

from cxrkit.data.errors import CxrError

_END = object()


class CacheLoader:
    """Iterate ``(images uint8 B x 1 x S x S, labels float32 B x C, rows int64 B)`` batches of a :class:`Cache`.

    Args:
        cache: an opened cache (:func:`cxrkit.data.open_cache`).
        rows: row numbers to draw from (e.g. ``cache.rows("train")``); None = all rows.
        batch_size: images per batch.
        shuffle: permute the rows each epoch, deterministically from ``(seed, epoch)`` (see :meth:`set_epoch`).
        drop_last: drop this rank's last batch when it is short.
        rank, world_size: DDP sharding like ``DistributedSampler``: the (permuted) rows are padded by repeating
            their head to a multiple of ``world_size`` and rank r takes every world_size-th row from r, so every
            rank gets the same number of batches and shares are disjoint apart from the padding.
        device: where batches go (``"cuda"``, ``torch.device``); None leaves them on the CPU.
        pin_memory: stage batches in pinned host memory; default: only when ``device`` is CUDA.
        prefetch: batches prepared ahead by the background thread (0: no thread).

    Within a batch rows come in ascending order (the ``rows`` tensor says which). Every batch is a tensor the
    caller owns; on CUDA the pinned staging buffers behind it are reused only after their copy has completed.
    """

    def __init__(self, cache, rows=None, batch_size: int = 64, *, shuffle: bool = False, seed: int = 0,
                 drop_last: bool = False, rank: int = 0, world_size: int = 1, device=None,
                 pin_memory: bool | None = None, prefetch: int = 2):
        import torch

        self.cache = cache
        n = len(cache.index)
        rows = np.arange(n, dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64).reshape(-1)
        if len(rows) and (rows.min() < 0 or rows.max() >= n):
            raise CxrError(f"row numbers must lie in [0, {n}) for this cache; got {rows.min()}..{rows.max()}")
        if batch_size < 1:
            raise CxrError(f"batch_size={batch_size}: must be at least 1")
        if world_size < 1 or not 0 <= rank < world_size:
            raise CxrError(f"rank={rank}, world_size={world_size}: need world_size >= 1 and 0 <= rank < world_size")
        self.rows = rows
        self.batch_size = int(batch_size)
        self.shuffle, self.seed, self.drop_last = bool(shuffle), int(seed), bool(drop_last)
        self.rank, self.world_size = int(rank), int(world_size)
        self.device = torch.device(device) if device is not None else None
        on_cuda = self.device is not None and self.device.type == "cuda"
        self.pin_memory = on_cuda if pin_memory is None else bool(pin_memory)
        if self.pin_memory and not torch.cuda.is_available():
            raise CxrError("pin_memory=True needs CUDA, which this machine does not have; leave it unset")
        self.prefetch = max(0, int(prefetch))
        self.epoch = 0
        self._labels = cache.labels()

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose permutation the next iteration uses (call it every epoch, as with DDP)."""
        self.epoch = int(epoch)

    @property
    def per_rank(self) -> int:
        """Rows this rank sees per epoch (padding included)."""
        return math.ceil(len(self.rows) / self.world_size) if len(self.rows) else 0

    def __len__(self) -> int:
        k = self.per_rank
        return k // self.batch_size if self.drop_last else math.ceil(k / self.batch_size)

    def epoch_rows(self) -> np.ndarray:
        """This rank's rows for the current epoch, in the order they are batched."""
        order = self.rows
        if self.shuffle:
            order = order[np.random.default_rng([self.seed, self.epoch]).permutation(len(order))]
        total = self.per_rank * self.world_size
        if total > len(order):  # pad by repeating the head, as DistributedSampler does
            order = np.concatenate([order, np.resize(order, total - len(order))])
        return order[self.rank:total:self.world_size]

    def _batches(self):
        mine = self.epoch_rows()
        for b in range(len(self)):
            yield np.sort(mine[b * self.batch_size:(b + 1) * self.batch_size])

    def __iter__(self):
        import torch

        on_cuda = self.device is not None and self.device.type == "cuda"
        stage = _PinnedRing(self, torch) if self.pin_memory and on_cuda else None
        make = stage.fill if stage is not None else self._gather
        it = _Prefetch(map(make, self._batches()), self.prefetch) if self.prefetch else map(make, self._batches())
        try:
            for images, labels, rows, slot in it:
                if self.device is not None:
                    images = images.to(self.device, non_blocking=self.pin_memory)
                    labels = labels.to(self.device, non_blocking=self.pin_memory)
                if stage is not None:
                    stage.release(slot)
                yield images, labels, rows
        finally:
            if isinstance(it, _Prefetch):
                it.stop.set()
            if stage is not None:
                stage.unblock()  # a producer waiting for a staging slot must see the stop, not wait forever
            if isinstance(it, _Prefetch):
                it.close()

    def _gather(self, rows: np.ndarray):
        import torch

        n, s = len(rows), self.cache.size
        images = torch.empty((n, 1, s, s), dtype=torch.uint8, pin_memory=self.pin_memory)
        # mode="clip" (rows were range-checked up front) lets numpy write straight into ``out``, no temporary
        np.take(self.cache.images, rows, axis=0, out=images.numpy()[:, 0], mode="clip")
        return images, torch.from_numpy(self._labels[rows]), torch.from_numpy(rows), None


class _PinnedRing:
    """Pinned host staging buffers, reused once the device copy out of them has completed (CUDA events)."""

    def __init__(self, loader: CacheLoader, torch):
        self.loader, self.torch = loader, torch
        b, s, c = loader.batch_size, loader.cache.size, len(loader.cache.label_names)
        n_slots = max(2, loader.prefetch + 1)
        self.images = [torch.empty((b, 1, s, s), dtype=torch.uint8).pin_memory() for _ in range(n_slots)]
        self.labels = [torch.empty((b, c), dtype=torch.float32).pin_memory() for _ in range(n_slots)]
        self.events = [None] * n_slots
        self.free: queue.Queue = queue.Queue()
        for k in range(n_slots):
            self.free.put(k)

    def fill(self, rows: np.ndarray):
        k = self.free.get()
        if self.events[k] is not None:
            self.events[k].synchronize()
        n = len(rows)
        np.take(self.loader.cache.images, rows, axis=0, out=self.images[k].numpy()[:n, 0], mode="clip")
        np.take(self.loader._labels, rows, axis=0, out=self.labels[k].numpy()[:n], mode="clip")
        return self.images[k][:n], self.labels[k][:n], self.torch.from_numpy(rows), k

    def unblock(self) -> None:
        for k in range(len(self.images)):
            self.free.put(k)

    def release(self, k: int) -> None:
        event = self.torch.cuda.Event()
        event.record()
        self.events[k] = event
        self.free.put(k)


class _Prefetch:
    """Run an iterator in a background thread, ``depth`` items ahead; exceptions re-raise in the consumer."""

    def __init__(self, source, depth: int):
        self.q: queue.Queue = queue.Queue(maxsize=depth)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(source,), daemon=True, name="CacheLoader-prefetch")
        self.thread.start()

    def _run(self, source) -> None:
        try:
            for item in source:
                if not self._put(item):
                    return
            self._put(_END)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            self._put(exc)

    def _put(self, item) -> bool:
        while not self.stop.is_set():
            try:
                self.q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self):
        return self

    def __next__(self):
        item = self.q.get()
        if item is _END:
            raise StopIteration
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        self.stop.set()
        try:  # free a slot so a producer blocked in put() sees the stop flag at once
            while True:
                self.q.get_nowait()
        except queue.Empty:
            pass
        self.thread.join(timeout=5)
