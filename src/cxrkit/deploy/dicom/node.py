"""The running node: the SCP, the study processing (worker processes, or a thread with ``workers = 0``) and a
delivery thread over one spool.

``Node(bundle, config).run()`` blocks until SIGTERM/SIGINT (``cxr node``); ``start()`` / ``stop()`` for tests and
embedding. Nothing is held only in memory: every part works from the spool, so a restart continues where a
killed node stopped (pending studies processed, undelivered results re-sent).
"""
from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from cxrkit.deploy.dicom.config import NodeConfig
from cxrkit.deploy.dicom.spool import Spool
from cxrkit.deploy.dicom.workers import IDLE_POLL_S, Doorbell, StudyLoop, WorkerPool, auto_workers

log = logging.getLogger("cxrkit.node")
WATCH_S = 2.0   # how often the node checks that its workers are alive


class Node:
    def __init__(self, bundle: str | Path, config: NodeConfig):
        from cxrkit.deploy.dicom.delivery import Delivery
        from cxrkit.deploy.dicom.scp import read_uids

        self.bundle, self.config = Path(bundle), config
        self.spool = Spool(config.spool)
        counts = self.spool.recover(lambda path: read_uids(path.read_bytes()))
        if any(counts.values()):
            log.info("recovered the spool after an unclean stop: %s", counts)
        self.workers = auto_workers() if config.workers is None else config.workers
        self.processor = None
        self.pool: WorkerPool | None = None
        if self.workers == 0:
            from cxrkit.deploy.dicom.process import Processor

            self.processor = Processor(bundle, config, self.spool)
        self.delivery = Delivery(self.spool, config)
        self._stop = threading.Event()
        self._study_event = threading.Event()
        # the workers set it when results are queued, so it is a process-shared event in pool mode
        self._delivery_event = threading.Event() if self.workers == 0 else Doorbell(WorkerPool.context())
        self._threads: list[threading.Thread] = []
        self.server = None

    # -- life cycle -----------------------------------------------------------------------------------
    def start(self) -> "Node":
        from cxrkit.deploy.dicom.scp import StoreHandler, start_server

        if self.processor is not None:
            self.processor.warm_up()
            runtime = self.processor.runtime
            described = (runtime.backend, runtime.precision, runtime.reason,
                         self.processor.algorithm.trained_on_synthetic)
            loop = StudyLoop(self.processor, self.spool, self.config, self._stop, self._study_event,
                             self._delivery_event.set)
            self._threads.append(threading.Thread(target=loop.run, name="cxr-node-process", daemon=True))
        else:
            self.pool = WorkerPool(self.bundle, self.config, self.workers, self._delivery_event).start()
            described = self.pool.runtime
            self._threads.append(threading.Thread(target=self._watch_loop, name="cxr-node-watch", daemon=True))
        self._threads.append(threading.Thread(target=self._delivery_loop, name="cxr-node-deliver", daemon=True))
        for t in self._threads:
            t.start()
        self.server = start_server(self.config, StoreHandler(self.spool, on_stored=self._stored))
        self.port = self.server.server_address[1]
        backend, precision, reason, synthetic = described
        processing = "in this process" if self.pool is None else f"{self.workers} worker process(es)"
        log.info("node %s listening on %s:%d (runtime %s/%s: %s; processing in %s); spool %s; destinations: %s",
                 self.config.ae_title, self.config.host, self.port, backend, precision, reason, processing,
                 self.spool.root, ", ".join(map(str, self.config.destinations)) or "none (results stay in the spool)")
        if synthetic:
            from cxrkit.bundle.synthetic import SYNTHETIC_WARNING

            log.warning(SYNTHETIC_WARNING)
        if not self.config.allowed_calling_aets:
            log.warning("no calling-AE allow-list: any DICOM peer that can reach the port may send films")
        return self

    def stop(self, timeout: float = 10.0) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server = None
        self._stop.set()
        self._study_event.set()
        self._delivery_event.set()
        if self.pool is not None:
            self.pool.close(timeout)
        for t in self._threads:
            t.join(timeout)
        self.spool.close()

    def run(self) -> None:
        """Serve until SIGTERM or SIGINT (then finish the study in hand and stop)."""
        import signal

        def _term(signum, frame):
            self._stop.set()

        previous = {s: signal.signal(s, _term) for s in (signal.SIGTERM, signal.SIGINT)}
        self.start()
        try:
            while not self._stop.wait(0.5):
                pass
        finally:
            log.info("stopping")
            self.stop()
            for s, handler in previous.items():
                signal.signal(s, handler)

    def worker_pids(self) -> list[int]:
        return self.pool.pids() if self.pool is not None else []

    # -- threads --------------------------------------------------------------------------------------
    def _stored(self, study_uid: str) -> None:
        if self.pool is not None:
            self.pool.wake()
        else:
            self._study_event.set()

    def _watch_loop(self) -> None:
        while not self._stop.wait(WATCH_S):
            self.pool.check()

    def _delivery_loop(self) -> None:
        while not self._stop.is_set():
            self._delivery_event.clear()
            try:
                self.delivery.run_once()
            except Exception:  # noqa: BLE001 - keep delivering; the item stays queued
                log.exception("delivery pass failed")
            next_at = self.spool.next_outbox_time()
            wait = IDLE_POLL_S if next_at is None else max(0.0, min(IDLE_POLL_S, next_at - time.time()))
            self._delivery_event.wait(wait)
        self.spool.close()

