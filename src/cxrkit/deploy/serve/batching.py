"""Dynamic micro-batching: concurrent requests are gathered into one model call.

Requests put ``(item, future)`` on an asyncio queue. One worker task takes the first waiting item, then keeps
collecting until it has ``max_batch`` items or ``max_wait_ms`` has passed since the first, runs the batch function
in a thread (``run_in_executor``, so the event loop keeps accepting and decoding requests meanwhile) and resolves
each request's future. While a batch runs, newcomers queue up and form the next batch, so under load batches fill
without waiting. ``max_batch=1`` turns batching off (one model call per request).
"""
from __future__ import annotations

import asyncio
from concurrent.futures import Executor
from typing import Any, Callable, Sequence

from cxrkit.deploy.serve.errors import ServeError


class QueueFull(ServeError):
    """More requests are waiting than the queue holds (the client should retry later: 503)."""


class MicroBatcher:
    """Gather submitted items into batches for ``run_batch(items) -> results`` (same length and order).

    ``run_batch`` may return an Exception instance in place of a result to fail just that item. ``executor`` runs
    it (None: the loop's default executor). ``observe`` (if given) is called with each batch size; ``on_depth``
    with the queue depth whenever it changes.
    """

    def __init__(self, run_batch: Callable[[Sequence[Any]], Sequence[Any]], *, executor: Executor | None,
                 max_batch: int = 16, max_wait_ms: float = 10.0, max_queue: int = 1024,
                 observe: Callable[[int], None] | None = None, on_depth: Callable[[int], None] | None = None):
        if max_batch < 1 or max_wait_ms < 0 or max_queue < 1:
            raise ServeError(f"micro-batching needs max_batch >= 1, max_wait_ms >= 0 and max_queue >= 1; got "
                             f"{max_batch}, {max_wait_ms}, {max_queue}")
        self.run_batch, self.executor = run_batch, executor
        self.max_batch, self.max_wait, self.max_queue = int(max_batch), max_wait_ms / 1000.0, int(max_queue)
        self.observe, self.on_depth = observe, on_depth
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None

    @property
    def depth(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    def start(self) -> None:
        """Start the worker on the running event loop (call from the app's lifespan)."""
        if self._task is None:
            self._queue = asyncio.Queue()
            self._task = asyncio.get_running_loop().create_task(self._worker(), name="cxr-micro-batcher")

    async def stop(self) -> None:
        """Cancel the worker; requests still queued fail with a ServeError."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        while self._queue is not None and not self._queue.empty():
            _, fut = self._queue.get_nowait()
            if not fut.done():
                fut.set_exception(ServeError("the server is shutting down"))

    async def submit(self, item: Any) -> Any:
        """Queue one item and wait for its result (cancelling the wait drops the item if not yet run)."""
        if self._queue is None or self._task is None:
            raise ServeError("the micro-batcher is not running")
        if self._queue.qsize() >= self.max_queue:
            raise QueueFull(f"server busy: {self.max_queue} requests already waiting; retry shortly")
        fut = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((item, fut))
        self._depth_changed()
        return await fut

    def _depth_changed(self) -> None:
        if self.on_depth is not None:
            self.on_depth(self.depth)

    async def _gather(self) -> list[tuple[Any, asyncio.Future]]:
        batch = [await self._queue.get()]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait
        while len(batch) < self.max_batch:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            left = deadline - loop.time()
            if left <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), left))
            except asyncio.TimeoutError:
                break
        self._depth_changed()
        return batch

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._gather()
            live = [(item, fut) for item, fut in batch if not fut.done()]  # timed-out requests are skipped
            if not live:
                continue
            if self.observe is not None:
                self.observe(len(live))
            try:
                results = await loop.run_in_executor(self.executor, self.run_batch, [item for item, _ in live])
                if len(results) != len(live):
                    raise RuntimeError(f"batch function returned {len(results)} results for {len(live)} items")
            except Exception as exc:  # a failing batch fails its requests, never the worker
                for _, fut in live:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            for (_, fut), result in zip(live, results):
                if fut.done():
                    continue
                if isinstance(result, BaseException):
                    fut.set_exception(result)
                else:
                    fut.set_result(result)
