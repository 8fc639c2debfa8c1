"""The running node: the SCP, a study assembler + processor thread and a delivery thread over one spool.

``Node(bundle, config).run()`` blocks until SIGTERM/SIGINT (``cxr node``); ``start()`` / ``stop()`` for tests and
embedding. Nothing is held only in memory: every thread works from the spool, so a restart continues where a
killed node stopped (pending studies processed, undelivered results re-sent).
"""
from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from cxrkit.deploy.dicom.config import NodeConfig
from cxrkit.deploy.dicom.spool import Spool, uid_key

log = logging.getLogger("cxrkit.node")
IDLE_POLL_S = 1.0   # the longest a thread sleeps when nothing is due (retries, a second process' changes)


class Node:
    def __init__(self, bundle: str | Path, config: NodeConfig):
        from cxrkit.deploy.dicom.delivery import Delivery
        from cxrkit.deploy.dicom.process import Processor
        from cxrkit.deploy.dicom.scp import read_uids

        self.config = config
        self.spool = Spool(config.spool)
        counts = self.spool.recover(lambda path: read_uids(path.read_bytes()))
        if any(counts.values()):
            log.info("recovered the spool after an unclean stop: %s", counts)
        self.processor = Processor(bundle, config, self.spool)
        self.delivery = Delivery(self.spool, config)
        self._stop = threading.Event()
        self._study_event = threading.Event()
        self._delivery_event = threading.Event()
        self._threads: list[threading.Thread] = []
        self.server = None

    # -- life cycle -----------------------------------------------------------------------------------
    def start(self) -> "Node":
        from cxrkit.deploy.dicom.scp import StoreHandler, start_server

        self.processor.warm_up()
        self._threads = [threading.Thread(target=self._process_loop, name="cxr-node-process", daemon=True),
                         threading.Thread(target=self._delivery_loop, name="cxr-node-deliver", daemon=True)]
        for t in self._threads:
            t.start()
        self.server = start_server(self.config, StoreHandler(self.spool, on_stored=self._stored))
        self.port = self.server.server_address[1]
        log.info("node %s listening on %s:%d (runtime %s/%s: %s); spool %s; destinations: %s",
                 self.config.ae_title, self.config.host, self.port, self.processor.runtime.backend,
                 self.processor.runtime.precision, self.processor.runtime.reason, self.spool.root,
                 ", ".join(map(str, self.config.destinations)) or "none (results stay in the spool)")
        if self.processor.algorithm.trained_on_synthetic:
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

    # -- threads --------------------------------------------------------------------------------------
    def _stored(self, study_uid: str) -> None:
        self._study_event.set()

    def _process_loop(self) -> None:
        while not self._stop.is_set():
            self._study_event.clear()  # before looking: a film stored from now on wakes the next wait
            due, next_due = self.spool.due_studies(self.config.settle_seconds)
            for study_uid in due:
                if self._stop.is_set():
                    break
                self._process(study_uid)
            if due:
                continue  # more may have settled meanwhile
            wait = IDLE_POLL_S if next_due is None else max(0.0, min(IDLE_POLL_S, next_due - time.time()))
            self._study_event.wait(wait)
        self.spool.close()

    def _process(self, study_uid: str) -> None:
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
                             "state = 'received'", (f"processing failed: {type(exc).__name__}", study_uid))
            return
        if entry is not None:
            self._delivery_event.set()

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
