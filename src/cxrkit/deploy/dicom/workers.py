"""Processing studies: the settle loop, in a thread of the node or in worker processes.

Receiving (pynetdicom's association threads) and processing (decode, model, SR/SC writing: mostly Python) in one
process share one GIL: under four senders the processing thread got a fifth of it and delivered 13 studies/min
while 418/min arrived. Worker processes take processing off the receiving process' GIL and use every core. Each
worker owns a fixed share of the studies (a stable hash of the Study Instance UID), so no study is processed by
two workers and no claim is needed; a worker works from the spool only, so one that dies loses nothing (the node
starts a new one, which finds the study still ``received``).
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import multiprocessing as mp
import os
import select
import time
from pathlib import Path
from typing import Any, Callable

from cxrkit.deploy.dicom.config import NodeConfig, NodeConfigError
from cxrkit.deploy.dicom.spool import Spool, uid_key

log = logging.getLogger("cxrkit.node")
IDLE_POLL_S = 1.0        # the longest a loop sleeps when nothing is due (retries, a second process' changes)
READY_TIMEOUT_S = 600.0  # a worker loads the model (and compiles it for OpenVINO) before it says it is ready
RESTART_BACKOFF_S = (1.0, 5.0, 30.0)


def auto_workers(cpus: int | None = None) -> int:
    """Worker processes for ``workers = auto``: two (receiving keeps the node's own process busy, and two
    processing processes overlap one study's Python with the other's inference), one on a one-core machine."""
    cpus = cpus or os.cpu_count() or 1
    return 1 if cpus < 2 else 2


def owns(study_uid: str, index: int, count: int) -> bool:
    """Whether worker ``index`` of ``count`` processes this study (stable across restarts and processes)."""
    if count <= 1:
        return True
    digest = hashlib.sha1(study_uid.encode()).digest()
    return int.from_bytes(digest[:8], "big") % count == index


class Doorbell:
    """A wake-up between processes over a pipe, with threading.Event's set/clear/wait. multiprocessing.Event is
    not usable here: its condition makes ``set()`` wait for every sleeping waiter, so one worker killed while
    waiting (SIGKILL, the OOM killer) hangs the node's next ``set()`` for ever. A ring never blocks (a full
    pipe already rings) and a dead process leaves nothing locked."""

    def __init__(self, ctx):
        self._r, self._w = ctx.Pipe(duplex=False)
        os.set_blocking(self._r.fileno(), False)
        os.set_blocking(self._w.fileno(), False)

    def set(self) -> None:
        try:
            os.write(self._w.fileno(), b"\0")
        except OSError:  # BlockingIOError: it is ringing already; others: the reader is gone
            pass

    def clear(self) -> None:
        try:
            while os.read(self._r.fileno(), 4096):
                pass
        except BlockingIOError:
            pass

    def wait(self, timeout: float | None = None) -> bool:
        ready, _, _ = select.select([self._r.fileno()], [], [], timeout)
        return bool(ready)


class Flag:
    """A process-shared stop flag without a lock (a byte; see :class:`Doorbell` for why not an Event)."""

    def __init__(self, ctx):
        self._value = ctx.RawValue("b", 0)

    def set(self) -> None:
        self._value.value = 1

    def is_set(self) -> bool:
        return bool(self._value.value)


class StudyLoop:
    """Process every settled study of this loop's share until ``stop`` is set. ``wake`` is set when a film is
    stored; ``on_processed`` is called after a study's results are queued (to wake delivery)."""

    def __init__(self, processor, spool: Spool, config: NodeConfig, stop, wake,
                 on_processed: Callable[[], None], share: tuple[int, int] = (0, 1),
                 parent_alive: Callable[[], bool] = lambda: True):
        self.processor, self.spool, self.config = processor, spool, config
        self.stop, self.wake, self.on_processed = stop, wake, on_processed
        self.share, self.parent_alive = share, parent_alive
        processor.on_reported = on_processed  # the SR goes out before the pictures are made

    def run(self) -> None:
        try:
            while not self.stop.is_set() and self.parent_alive():
                self.wake.clear()  # before looking: a film stored from now on wakes the next wait
                due, next_due = self.spool.due_studies(self.config.settle_seconds)
                due = [uid for uid in due if owns(uid, *self.share)]
                for study_uid in due:
                    if self.stop.is_set():
                        break
                    self.process(study_uid)
                if due:
                    continue  # more may have settled meanwhile
                wait = IDLE_POLL_S if next_due is None else max(0.0, min(IDLE_POLL_S, next_due - time.time()))
                self.wake.wait(wait)
        finally:
            self.spool.close()

    def process(self, study_uid: str) -> None:
        from cxrkit.data.errors import CxrError

        try:
            entry = self.processor.process_study(study_uid)
        except Exception as exc:  # noqa: BLE001 - a bug on one study must not stop the node or loop forever
            if isinstance(exc, CxrError):
                log.warning("study %s: no results (%s); its instances are set aside (state 'failed')",
                            uid_key(study_uid), exc)
            else:
                log.exception("study %s: processing failed; its instances are set aside (state 'failed')",
                              uid_key(study_uid))
            with self.spool.transaction() as conn:
                conn.execute("UPDATE instances SET state = 'failed', reason = ? WHERE study_uid = ? AND "
                             "state IN ('received', 'reported')", (f"processing failed: {type(exc).__name__}",
                                                                   study_uid))
            return
        if entry is not None:
            self.on_processed()


def _die_with_parent() -> None:
    """Linux: the kernel kills this worker when the node's process dies (a kill -9 of the node must not leave
    a second processor on the spool beside the restarted node's)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # elsewhere the loop's parent check (below) ends the worker within a second


def worker_main(bundle: str, config: NodeConfig, index: int, count: int, threads: int, stop, wake, processed,
                conn, log_level: int) -> None:
    """A worker process: load the model, say ready (or why not), then run the study loop over its share."""
    _die_with_parent()
    parent = os.getppid()
    logging.basicConfig(level=log_level, format=f"%(asctime)s %(levelname)s %(name)s[w{index}] %(message)s")
    import warnings

    warnings.filterwarnings("ignore", module="highdicom")  # person-name style notes about the sender's headers
    from cxrkit.deploy.dicom.process import Processor

    try:
        spool = Spool(config.spool)
        processor = Processor(bundle, dataclasses.replace(config, threads=threads), spool)
        processor.warm_up()
    except Exception as exc:  # noqa: BLE001 - the node reports it and stops with the same message
        conn.send(("error", type(exc).__name__, str(exc)))
        return
    conn.send(("ready", processor.runtime.backend, processor.runtime.precision, processor.runtime.reason,
               processor.algorithm.trained_on_synthetic))
    conn.close()
    StudyLoop(processor, spool, config, stop, wake, processed.set, share=(index, count),
              parent_alive=lambda: os.getppid() == parent).run()


class WorkerPool:
    """``count`` worker processes over one spool; restarted when one dies; stopped with the node."""

    def __init__(self, bundle: str | Path, config: NodeConfig, count: int, processed):
        self.bundle, self.config, self.count = str(bundle), config, count
        self.ctx = self.context()
        self.stop_event = Flag(self.ctx)
        self.processed = processed
        self.wakes = [Doorbell(self.ctx) for _ in range(count)]
        self.procs: list[Any] = [None] * count
        self.restarts = [0] * count
        self.runtime: tuple = ()
        cpus = os.cpu_count() or 1
        self.threads = config.threads or max(1, cpus // count)

    @staticmethod
    def context():
        return mp.get_context("spawn")  # no fork of a process holding pynetdicom threads and SQLite handles

    def start(self) -> "WorkerPool":
        launched = [self._launch(i) for i in range(self.count)]  # they load the model in parallel
        try:
            for i, (proc, conn) in enumerate(launched):
                self._await_ready(i, proc, conn)
        except BaseException:
            self.close(timeout=2.0)
            for proc, _ in launched:
                if proc.is_alive():
                    proc.kill()
            raise
        return self

    def _spawn(self, i: int) -> None:
        self._await_ready(i, *self._launch(i))

    def _launch(self, i: int):
        parent_conn, child_conn = self.ctx.Pipe(duplex=False)
        proc = self.ctx.Process(
            target=worker_main, name=f"cxr-node-worker-{i}", daemon=True,
            args=(self.bundle, self.config, i, self.count, self.threads, self.stop_event, self.wakes[i],
                  self.processed, child_conn, logging.getLogger().getEffectiveLevel()))
        proc.start()
        child_conn.close()
        return proc, parent_conn

    def _await_ready(self, i: int, proc, parent_conn) -> None:
        if not parent_conn.poll(READY_TIMEOUT_S):
            proc.kill()
            raise NodeConfigError(f"node worker {i} did not load the model within {READY_TIMEOUT_S:.0f} s")
        try:
            msg = parent_conn.recv()
        except EOFError:
            proc.join(5)
            raise NodeConfigError(f"node worker {i} died while loading the model (exit code {proc.exitcode}); "
                                  "run with workers = 0 to see the error in this process") from None
        if msg[0] == "error":
            proc.join(5)
            from cxrkit.data.errors import CxrError

            raise CxrError(msg[2]) if msg[1] != "NodeConfigError" else NodeConfigError(msg[2])
        self.runtime = msg[1:]
        self.procs[i] = proc

    def wake(self) -> None:
        for event in self.wakes:
            event.set()

    def check(self) -> None:
        """Restart workers that died (a crash in a decoder, the OOM killer), with a growing pause."""
        for i, proc in enumerate(self.procs):
            if proc is None or proc.is_alive() or self.stop_event.is_set():
                continue
            pause = RESTART_BACKOFF_S[min(self.restarts[i], len(RESTART_BACKOFF_S) - 1)]
            log.error("node worker %d stopped (exit code %s); starting a new one in %.0f s (its studies wait in "
                      "the spool)", i, proc.exitcode, pause)
            self.restarts[i] += 1
            time.sleep(pause)
            try:
                self._spawn(i)
            except Exception as exc:  # noqa: BLE001 - retried at the next check
                log.error("node worker %d could not be restarted: %s", i, exc)

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p is not None and p.is_alive()]

    def close(self, timeout: float = 10.0) -> None:
        self.stop_event.set()
        self.wake()
        deadline = time.time() + timeout
        for proc in self.procs:
            if proc is not None:
                proc.join(max(0.1, deadline - time.time()))
                if proc.is_alive():
                    proc.kill()
                    proc.join(5)
