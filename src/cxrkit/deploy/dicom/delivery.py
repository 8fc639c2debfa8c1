"""Sending results: C-STORE to each destination (one association per destination per pass) and the optional JSON
webhook, with back-off retries and a dead-letter folder after ``max_attempts`` failures.

Delivery is at-least-once with stable SOP Instance UIDs: a kill between a peer's success status and the spool's
record of it re-sends the same object, which a PACS stores once (same SOP Instance UID).
"""
from __future__ import annotations

import logging
import urllib.error
import urllib.request
from collections import defaultdict
from typing import Sequence

from cxrkit.deploy.dicom.config import Destination, NodeConfig
from cxrkit.deploy.dicom.spool import OutboxItem, Spool

log = logging.getLogger("cxrkit.node")
SUCCESS = {0x0000, 0xB000, 0xB006, 0xB007}  # success and the storage warnings (coercion, elements discarded)
RESULT_SOP_CLASSES = ("1.2.840.10008.5.1.4.1.1.88.33", "1.2.840.10008.5.1.4.1.1.88.34", "1.2.840.10008.5.1.4.1.1.7")
WEBHOOK_TIMEOUT = 10.0


class Delivery:
    """One delivery pass at a time over the spool's due outbox items."""

    def __init__(self, spool: Spool, config: NodeConfig):
        self.spool, self.config = spool, config

    def run_once(self) -> dict[str, int]:
        """Send every due item; returns counts of sent / failed / dead."""
        counts = {"sent": 0, "failed": 0, "dead": 0}
        groups: dict[str, list[OutboxItem]] = defaultdict(list)
        for item in self.spool.due_outbox():
            groups[item.destination].append(item)
        for destination, items in groups.items():
            if destination.startswith(("http://", "https://")):
                results = [(item, self._post(destination, item)) for item in items]
            else:
                results = self._store(Destination.parse(destination), items)
            for item, error in results:
                self._record(item, error, counts)
        return counts

    def _record(self, item: OutboxItem, error: str | None, counts: dict[str, int]) -> None:
        if error is None:
            self.spool.mark_sent(item)
            counts["sent"] += 1
            log.info("entry %s: %s sent to %s", item.entry_id, item.kind, _safe_dest(item.destination))
            if self.config.retention == "delete" and self.spool.entry_delivered(item.entry_id):
                self.spool.apply_retention(item.entry_id)
            return
        dead = self.spool.mark_failed(item, error, max_attempts=self.config.max_attempts,
                                      base=self.config.retry_base_seconds, cap=self.config.retry_max_seconds)
        counts["dead" if dead else "failed"] += 1
        if dead:
            log.error("entry %s: %s to %s failed %d times (%s); moved to the dead-letter folder, re-send with "
                      "`cxr node retry %s`", item.entry_id, item.kind, _safe_dest(item.destination),
                      item.attempts + 1, error, self.spool.root)
        else:
            log.warning("entry %s: %s to %s failed (%s); will retry", item.entry_id, item.kind,
                        _safe_dest(item.destination), error)

    def _store(self, dest: Destination, items: Sequence[OutboxItem]) -> list[tuple[OutboxItem, str | None]]:
        from pynetdicom import AE

        ae = AE(ae_title=self.config.ae_title)
        ae.acse_timeout, ae.dimse_timeout = self.config.acse_timeout, self.config.dimse_timeout
        ae.network_timeout = self.config.network_timeout
        for sop_class in RESULT_SOP_CLASSES:
            ae.add_requested_context(sop_class, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
        try:
            assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title,
                                 max_pdu=self.config.max_pdu_size)
        except Exception as exc:  # noqa: BLE001 - a resolver or socket failure is a failed attempt
            return [(item, f"cannot connect: {type(exc).__name__}: {exc}") for item in items]
        if not assoc.is_established:
            why = "association rejected" if assoc.is_rejected else "association aborted or peer unreachable"
            return [(item, why) for item in items]
        out: list[tuple[OutboxItem, str | None]] = []
        try:
            for item in items:
                if not item.path.is_file():
                    out.append((item, f"result file {item.path.name} is missing from the spool"))
                    continue
                try:
                    status = assoc.send_c_store(item.path)
                except Exception as exc:  # noqa: BLE001
                    out.append((item, f"{type(exc).__name__}: {exc}"))
                    continue
                code = getattr(status, "Status", None) if status else None
                out.append((item, None if code in SUCCESS else
                            ("no response (association dropped)" if code is None else f"status 0x{code:04X}")))
                if not assoc.is_established:  # the peer went away: the rest fail now and retry later
                    out += [(rest, "association dropped") for rest in items[len(out):]]
                    break
        finally:
            if assoc.is_established:
                assoc.release()
        return out

    def _post(self, url: str, item: OutboxItem) -> str | None:
        try:
            body = item.path.read_bytes()
        except OSError as exc:
            return f"webhook body unreadable: {exc.strerror}"
        req = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "application/json", "User-Agent": "cxrkit-node"})
        try:
            with urllib.request.urlopen(req, timeout=WEBHOOK_TIMEOUT) as resp:  # noqa: S310 - the site's own URL
                return None if 200 <= resp.status < 300 else f"HTTP {resp.status}"
        except urllib.error.HTTPError as exc:
            return f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError) as exc:
            return f"webhook unreachable: {getattr(exc, 'reason', exc)}"


def _safe_dest(destination: str) -> str:
    """A webhook URL may carry a token in its query: log scheme, host and path only."""
    if destination.startswith(("http://", "https://")):
        from urllib.parse import urlsplit

        parts = urlsplit(destination)
        return f"{parts.scheme}://{parts.hostname}{':' + str(parts.port) if parts.port else ''}{parts.path}"
    return destination
