"""The receiving side (pynetdicom SCP): C-ECHO, and C-STORE into the spool before the success status goes back.

C-STORE statuses (PS3.4 B.2.3): 0x0000 stored (or already stored: the same SOP Instance UID is kept once),
0xA700 out of resources (the spool could not be written: the sender keeps the film and retries), 0xA900 the
dataset does not match its SOP class (no Study/SOP Instance UID), 0xC000 cannot understand (undecodable dataset).
"""
from __future__ import annotations

import logging
from io import BytesIO
from typing import Callable

from cxrkit.deploy.dicom.config import NodeConfig
from cxrkit.deploy.dicom.spool import Spool, SpoolError, uid_key

log = logging.getLogger("cxrkit.node")
STATUS_OK, STATUS_OUT_OF_RESOURCES, STATUS_MISMATCH, STATUS_CANNOT_UNDERSTAND = 0x0000, 0xA700, 0xA900, 0xC000
MAX_DATASET_BYTES = 512 * 1024 * 1024  # a deflated dataset is refused if it would inflate beyond this


def read_uids(data: bytes) -> tuple[str, str, str] | None:
    """(SOP Instance UID, Study Instance UID, SOP Class UID) from a Part 10 byte string; None if unreadable."""
    import pydicom

    from cxrkit.data.decode import DecodeLimits
    from cxrkit.data.dicom import check_deflated_size

    try:
        check_deflated_size(data, "received dataset", DecodeLimits(max_bytes=MAX_DATASET_BYTES))
        ds = pydicom.dcmread(BytesIO(data), stop_before_pixels=True,
                             specific_tags=["SOPInstanceUID", "StudyInstanceUID", "SOPClassUID"])
        sop, study = str(ds.get("SOPInstanceUID", "") or ""), str(ds.get("StudyInstanceUID", "") or "")
        cls = str(ds.get("SOPClassUID", "") or "") or str(ds.file_meta.get("MediaStorageSOPClassUID", "") or "")
    except Exception:  # noqa: BLE001 - any parse failure (ImageError for a deflate bomb too) = "cannot understand"
        return None
    return (sop, study, cls) if sop and study else None


class StoreHandler:
    """The C-STORE / C-ECHO event handlers; ``on_stored(study_uid)`` wakes the study assembler."""

    def __init__(self, spool: Spool, on_stored: Callable[[str], None] = lambda uid: None):
        self.spool, self.on_stored = spool, on_stored

    def echo(self, event) -> int:
        log.info("C-ECHO from %s", _peer(event))
        return STATUS_OK

    def store(self, event) -> int:
        req = event.request
        sop_uid = str(req.AffectedSOPInstanceUID or "")
        try:
            if sop_uid and self.spool.has_instance(sop_uid):
                log.info("instance %s from %s already stored; kept once", uid_key(sop_uid), _peer(event))
                return STATUS_OK
            data = event.encoded_dataset(include_meta=True)
            uids = read_uids(data)
            if uids is None:
                log.warning("C-STORE from %s refused: the dataset cannot be parsed", _peer(event))
                return STATUS_CANNOT_UNDERSTAND
            sop, study, sop_class = uids
            if sop != sop_uid:
                log.warning("C-STORE from %s refused: SOP Instance UID in the dataset differs from the request",
                            _peer(event))
                return STATUS_MISMATCH
            new = self.spool.store_instance(data, sop_uid=sop, study_uid=study,
                                            sop_class_uid=sop_class or str(req.AffectedSOPClassUID),
                                            calling_aet=_calling(event))
        except SpoolError as exc:
            log.error("C-STORE from %s not stored: %s", _peer(event), exc)
            return STATUS_OUT_OF_RESOURCES
        if new:
            log.info("stored instance %s of study %s from %s", uid_key(sop), uid_key(study), _peer(event))
            self.on_stored(study)
        else:
            log.info("instance %s from %s already stored; kept once", uid_key(sop), _peer(event))
        return STATUS_OK


def _calling(event) -> str:
    try:
        return str(event.assoc.requestor.ae_title).strip()
    except Exception:  # noqa: BLE001
        return ""


def _peer(event) -> str:
    try:
        req = event.assoc.requestor
        return f"{str(req.ae_title).strip()}@{req.address}"
    except Exception:  # noqa: BLE001
        return "?"


def make_ae(config: NodeConfig):
    """A configured pynetdicom AE (contexts, limits, timeouts, calling-AE allow-list)."""
    from pynetdicom import AE

    from cxrkit.deploy.dicom.sop import add_storage_contexts

    ae = AE(ae_title=config.ae_title)
    add_storage_contexts(ae)
    ae.maximum_associations = config.max_associations
    ae.maximum_pdu_size = config.max_pdu_size
    ae.acse_timeout, ae.dimse_timeout = config.acse_timeout, config.dimse_timeout
    ae.network_timeout = config.network_timeout
    ae.require_called_aet = True
    if config.allowed_calling_aets:
        ae.require_calling_aet = list(config.allowed_calling_aets)
    return ae


def start_server(config: NodeConfig, handler: StoreHandler):
    """Listen on (host, port) in background threads; returns the pynetdicom server (``.shutdown()`` stops it)."""
    from pynetdicom import evt

    from cxrkit.deploy.dicom.config import NodeConfigError

    ae = make_ae(config)
    handlers = [(evt.EVT_C_STORE, handler.store), (evt.EVT_C_ECHO, handler.echo),
                (evt.EVT_REJECTED, _log_rejected), (evt.EVT_ABORTED, _log_aborted)]
    try:
        server = ae.start_server((config.host, config.port), block=False, evt_handlers=handlers)
    except OSError as exc:
        raise NodeConfigError(f"cannot listen on {config.host}:{config.port} ({exc.strerror}); is another node "
                              "running there? choose another --port") from None
    return server


def _log_rejected(event) -> None:
    log.warning("association from %s rejected (calling AE not allowed or called AE wrong)", _peer(event))


def _log_aborted(event) -> None:
    log.warning("association from %s aborted", _peer(event))
