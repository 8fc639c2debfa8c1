"""The DICOM node against real peers: dcmtk's echoscu/storescu as the modality, storescp as the PACS (results
checked with dsrdump and highdicom), on 127.0.0.1. The Orthanc round trip and kill -9 are in test_dicom_pacs.py."""
from __future__ import annotations

import logging
import stat
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from dicom_peers import (
    NOT_CHEST, REAL_FILM, StoreSCP, echoscu, free_port, make_film, need_dcmtk, read_objects, storescu,
)

pytest.importorskip("pynetdicom")
pytest.importorskip("highdicom")

SR_CLASSES = ("1.2.840.10008.5.1.4.1.1.88.33", "1.2.840.10008.5.1.4.1.1.88.34")
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"


def node_bundle(make_tiny_bundle, folder: Path) -> Path:
    """A tiny random-weight bundle whose Pneumothorax and Consolidation thresholds are 0 (always positive: urgent,
    with heatmaps) and every other threshold above 1 (never positive), so the expected SR content is known.
    (With seed 0 the random model's Consolidation map has a hot region, its Pneumothorax map is flat.)"""
    from cxrkit.bundle.format import read_bundle_config, write_bundle_config

    bundle = make_tiny_bundle(folder)
    cfg = read_bundle_config(bundle)
    cfg["thresholds"] = {n: (0.0 if n in ("Pneumothorax", "Consolidation") else 1.01) for n in cfg["label_names"]}
    # tuned box parameters for one finding (cxr tune-boxes stores them so): its SR regions must follow them
    cfg["explain"] = {"boxes": {"cam": {"Consolidation": {"threshold": 0.3, "min_area_frac": 0.0, "max_boxes": 1}}}}
    write_bundle_config(bundle, cfg)
    return bundle


@pytest.fixture(scope="module")
def bundle(make_tiny_bundle, tmp_path_factory):
    return node_bundle(make_tiny_bundle, tmp_path_factory.mktemp("bundle") / "bundle")


@pytest.fixture()
def pacs(tmp_path):
    need_dcmtk()
    scp = StoreSCP(tmp_path / "pacs").start()
    yield scp
    scp.stop()


def start_node(bundle, tmp_path, destinations, **overrides):
    from cxrkit.deploy.dicom.config import build_config
    from cxrkit.deploy.dicom.node import Node

    cfg = build_config(port=free_port(), spool=tmp_path / "spool", destinations=destinations,
                       settle_seconds=overrides.pop("settle_seconds", 0.3),
                       workers=overrides.pop("workers", 0), **overrides)  # worker processes: their own tests
    return Node(bundle, cfg).start()


@pytest.fixture()
def node(bundle, tmp_path, pacs):
    n = start_node(bundle, tmp_path, [f"PACS@127.0.0.1:{pacs.port}"])
    yield n
    n.stop()


def _study(tmp_path, shared_data, name, n=1, **kw):
    from pydicom.uid import generate_uid

    study = generate_uid()
    return study, [make_film(shared_data / REAL_FILM, tmp_path / "films" / f"{name}_{k}.dcm", study_uid=study, **kw)
                   for k in range(n)]


def test_echo_and_single_film_round_trip(node, bundle, pacs, tmp_path, shared_data, caplog):
    import highdicom as hd
    import pydicom

    caplog.set_level(logging.INFO, logger="cxrkit.node")
    assert echoscu(node.port).returncode == 0
    src = pydicom.dcmread(shared_data / REAL_FILM)
    study, files = _study(tmp_path, shared_data, "one")
    sent = storescu(node.port, *files)
    assert sent.returncode == 0, sent.stderr
    objs = read_objects(pacs.wait_for(2))  # SR + SC
    srs = [o for o in objs if o.SOPClassUID in SR_CLASSES]
    scs = [o for o in objs if o.SOPClassUID == SC_CLASS]
    assert len(srs) == 1 and len(scs) == 1
    for o in objs:  # back into the same study, new series, patient context copied
        assert o.StudyInstanceUID == study and o.PatientID == src.PatientID
        assert o.SeriesInstanceUID != pydicom.dcmread(files[0]).SeriesInstanceUID
        assert o.Manufacturer == "cxrkit"
    assert scs[0].BurnedInAnnotation == "YES"
    sr_file = [f for f in pacs.files() if pydicom.dcmread(f).SOPClassUID in SR_CLASSES][0]
    dump = subprocess.run(["dsrdump", str(sr_file)], capture_output=True, text=True, timeout=30)
    assert dump.returncode == 0 and "error" not in (dump.stdout + dump.stderr).lower(), dump.stderr
    assert "Pneumothorax" in dump.stdout and "Research use only" in dump.stdout
    report = hd.sr.srread(sr_file)
    assert report.StudyInstanceUID == study
    # worklist: one urgent entry (Pneumothorax threshold 0), a film image and a heatmap image
    from cxrkit.deploy.dicom.worklist import entry_image, read_worklist

    entries = read_worklist(node.spool.root)
    assert len(entries) == 1 and entries[0]["priority_label"] == "urgent"
    film = entries[0]["films"][0]
    assert set(film["images"]) == {"film", "Pneumothorax", "Consolidation"}
    assert entry_image(node.spool.root, entries[0]["entry_id"], film["images"]["Consolidation"]).is_file()
    found = {f["name"]: f for f in film["findings"]}
    assert found["Consolidation"]["positive"] and found["Consolidation"]["boxes"], "a hot region gets a box"
    assert found["Pneumothorax"]["positive"] and not found["Pneumothorax"]["boxes"], "a flat map gets none"
    assert not found["Effusion"]["positive"]
    # the boxes are boxes_for's, with the bundle's tuned parameters (one box at 0.3 x peak), in the SR too
    from cxrkit.bundle import load_bundle
    from cxrkit.data.dicom import decode_dicom
    from cxrkit.deploy.dicom.sr import box_polyline
    from cxrkit.explain import boxes_for, explain_images

    pred = load_bundle(bundle)
    image, _ = decode_dicom(pydicom.dcmread(files[0]))
    expected = boxes_for(pred, "Consolidation", explain_images(pred, [image], ["Consolidation"])[0]["Consolidation"],
                         "cam")
    assert len(expected) == 1 and expected[0][2] * expected[0][3] > 0
    np.testing.assert_allclose(found["Consolidation"]["boxes"], [b[:4] for b in expected], atol=1.0)
    rois = report.content.get_planar_roi_measurement_groups()
    assert len(rois) == 1  # Consolidation's one box; Pneumothorax (flat map) has none
    np.testing.assert_allclose(rois[0].roi.value, box_polyline(expected[0], src.Rows, src.Columns), atol=1.0)
    # retention "delete" (default): once every result is delivered the film and the sent results leave the spool
    end = time.time() + 10
    while time.time() < end and list((node.spool.root / "incoming").glob("*/*.dcm")):
        time.sleep(0.1)
    assert not list((node.spool.root / "incoming").glob("*/*.dcm"))
    assert not list((node.spool.root / "results").glob("*/*.dcm"))
    # privacy: spool 0700, no patient or study identifiers in the node's log
    assert stat.S_IMODE(node.spool.root.stat().st_mode) == 0o700
    text = caplog.text
    assert text and src.PatientID not in text and study not in text and str(src.PatientName) not in text


@pytest.fixture()
def slow_settle_node(bundle, tmp_path, pacs):
    # one storescu process per film: on a loaded machine consecutive films can be further apart than 0.3 s, and a
    # study quiet for the settle time is (by design) processed, the later films as a second batch with its own SR
    n = start_node(bundle, tmp_path, [f"PACS@127.0.0.1:{pacs.port}"], settle_seconds=3.0)
    yield n
    n.stop()


def test_transfer_syntaxes_lateral_and_non_chest_in_one_study(slow_settle_node, pacs, tmp_path, shared_data):
    from pydicom import uid

    node = slow_settle_node

    from cxrkit.deploy.dicom.sop import image_transfer_syntaxes

    study = uid.generate_uid()
    syntaxes = [uid.ImplicitVRLittleEndian, uid.ExplicitVRLittleEndian, uid.DeflatedExplicitVRLittleEndian,
                uid.RLELossless, uid.JPEG2000Lossless, uid.JPEGLSLossless, uid.JPEGLosslessSV1, uid.JPEGBaseline8Bit]
    assert {str(s) for s in syntaxes} <= set(image_transfer_syntaxes())
    films = [make_film(shared_data / REAL_FILM, tmp_path / "films" / f"ts{k}.dcm", study_uid=study,
                       syntax=str(ts), size=None if ts == uid.JPEGBaseline8Bit else 256)
             for k, ts in enumerate(syntaxes)]
    lateral = make_film(shared_data / REAL_FILM, tmp_path / "films" / "lat.dcm", study_uid=study, view="LL", size=256)
    other = make_film(shared_data / NOT_CHEST, tmp_path / "films" / "abd.dcm", study_uid=study, modality="OT",
                      body="ABDOMEN", view="AP", size=None)
    for f in films + [lateral, other]:  # one association per file, each in its own transfer syntax
        sent = storescu(node.port, f)
        assert sent.returncode == 0, (f, sent.stderr)
    objs = read_objects(pacs.wait_for(1 + len(films)))
    srs = [o for o in objs if o.SOPClassUID in SR_CLASSES]
    assert len(srs) == 1, "one study, one SR"
    assert len([o for o in objs if o.SOPClassUID == SC_CLASS]) == len(films)
    from cxrkit.deploy.dicom.worklist import read_worklist

    entry = read_worklist(node.spool.root)[0]
    assert len(entry["films"]) == len(films)
    reasons = " ".join(s["reason"] for s in entry["skipped"])
    assert "lateral" in reasons and "OT" in reasons


def test_duplicate_instance_stored_and_processed_once(node, pacs, tmp_path, shared_data):
    study, files = _study(tmp_path, shared_data, "dup")
    assert storescu(node.port, files[0]).returncode == 0
    assert storescu(node.port, files[0]).returncode == 0
    pacs.wait_for(2)
    time.sleep(1.5)  # a second (wrong) processing would have delivered by now
    assert pacs.store_requests() == 2
    counts = node.spool.conn().execute("SELECT COUNT(*) FROM instances").fetchone()[0]
    assert counts == 1


def test_unsupported_sop_class_refused_and_node_stays_up(node, tmp_path, shared_data):
    study, files = _study(tmp_path, shared_data, "ct", sop_class="1.2.840.10008.5.1.4.1.1.2", size=64)  # CT Image
    sent = storescu(node.port, *files)
    assert sent.returncode != 0  # no presentation context accepted for CT
    assert echoscu(node.port).returncode == 0


def test_calling_aet_allow_list(bundle, tmp_path, pacs, shared_data):
    n = start_node(bundle, tmp_path, [f"PACS@127.0.0.1:{pacs.port}"], allowed_calling_aets=("MODALITY",))
    try:
        assert echoscu(n.port, aet="STRANGER").returncode != 0
        assert echoscu(n.port, aet="MODALITY").returncode == 0
    finally:
        n.stop()


def test_failed_delivery_dead_letter_then_retry(bundle, tmp_path, shared_data):
    need_dcmtk()
    port = free_port()  # nothing listens there yet
    n = start_node(bundle, tmp_path, [f"PACS@127.0.0.1:{port}"], max_attempts=2, retry_base_seconds=0.1,
                   acse_timeout=2.0, network_timeout=2.0)
    try:
        study, files = _study(tmp_path, shared_data, "dead")
        assert storescu(n.port, *files).returncode == 0
        end = time.time() + 30
        while time.time() < end and len(list((n.spool.root / "dead-letter").glob("*/*.dcm"))) < 2:
            time.sleep(0.1)
        dead = list((n.spool.root / "dead-letter").glob("*/*.dcm"))
        assert len(dead) == 2  # SR + SC
    finally:
        n.stop()
    scp = StoreSCP(tmp_path / "late-pacs", port=port).start()
    try:
        from dicom_peers import CXR

        out = subprocess.run([str(CXR), "node", "retry", str(tmp_path / "spool")], capture_output=True, text=True,
                             timeout=120)
        assert out.returncode == 0, out.stderr
        assert "2 result(s) moved" in out.stdout
        scp.wait_for(2)
    finally:
        scp.stop()
    assert not list((tmp_path / "spool" / "dead-letter").glob("*/*.dcm"))


def test_bad_config_is_a_short_error(bundle, tmp_path):
    from dicom_peers import CXR

    bad = tmp_path / "node.toml"
    bad.write_text('[node]\nport = "eleven"\n')
    out = subprocess.run([str(CXR), "node", str(bundle), "--config", str(bad)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 2 and "port" in out.stderr and "Traceback" not in out.stderr
    out = subprocess.run([str(CXR), "node", str(bundle.parent), "--spool", str(tmp_path / "s")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "did you mean" in out.stderr


def test_webhook_gets_a_de_identified_entry(bundle, tmp_path, shared_data):
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    import pydicom

    need_dcmtk()
    bodies: list[dict] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    n = start_node(bundle, tmp_path, [], webhook_url=f"http://127.0.0.1:{server.server_port}/cxr?token=s3cret")
    try:
        study, files = _study(tmp_path, shared_data, "hook")
        assert storescu(n.port, *files).returncode == 0
        end = time.time() + 30
        while time.time() < end and not bodies:
            time.sleep(0.1)
    finally:
        n.stop()
        server.shutdown()
    assert len(bodies) == 1
    body = bodies[0]
    assert body["priority_label"] == "urgent" and body["notice"].startswith("Research use only")
    text = json.dumps(body)
    src = pydicom.dcmread(files[0])
    assert study not in text and src.PatientID not in text and "ACC0001" not in text


def test_worker_processes_share_the_studies_and_a_killed_worker_is_replaced(bundle, tmp_path, pacs, shared_data):
    """workers = 2 (the CLI's default on 2 cores): each study processed once by one of two processes; a worker
    killed with SIGKILL is replaced and its studies still get their results; stop ends the workers."""
    import os
    import signal

    from cxrkit.deploy.dicom.workers import owns

    node = start_node(bundle, tmp_path, [f"PACS@127.0.0.1:{pacs.port}"], workers=2)
    try:
        pids = node.worker_pids()
        assert len(pids) == 2 and os.getpid() not in pids
        studies = []
        while len(studies) < 6 or len({owns(study, 0, 2) for study, _ in studies}) < 2:  # work for both
            studies.append(_study(tmp_path, shared_data, f"w{len(studies)}"))
        assert storescu(node.port, *[f for _, files in studies for f in files]).returncode == 0
        pacs.wait_for(2 * len(studies), timeout=120)  # SR + SC per study
        os.kill(pids[0], signal.SIGKILL)
        end = time.time() + 60
        while time.time() < end and (len(node.worker_pids()) < 2 or pids[0] in node.worker_pids()):
            time.sleep(0.2)
        assert len(node.worker_pids()) == 2 and pids[0] not in node.worker_pids(), "the killed worker is replaced"
        more = [_study(tmp_path, shared_data, f"after{k}") for k in range(4)]
        assert storescu(node.port, *[f for _, files in more for f in files]).returncode == 0
        pacs.wait_for(2 * len(studies + more), timeout=120)
        time.sleep(1.0)
        assert pacs.store_requests() == 2 * len(studies + more), "every study exactly once"
        received = {o.StudyInstanceUID for o in read_objects(pacs.files())}
        assert received == {study for study, _ in studies + more}
    finally:
        workers = node.worker_pids()
        node.stop()
    for pid in workers:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()


def test_worker_start_up_errors_reach_the_node(bundle, tmp_path):
    from cxrkit.deploy.dicom.config import NodeConfigError

    with pytest.raises(NodeConfigError, match="Nodule-ish"):
        start_node(bundle, tmp_path, [], workers=1, report_findings=("Nodule-ish",))


def test_kill_between_report_and_pictures_makes_the_pictures_once_and_never_resends_the_sr(
        bundle, tmp_path, shared_data):
    """The SR is queued (first commit) before the pictures are made (second commit). A process that dies between
    the two leaves the films 'reported'; the next run makes the SC under the same entry, with the same UIDs as the
    dead run would have used, and queues the SR no second time."""
    import pydicom

    from cxrkit.deploy.dicom.config import build_config
    from cxrkit.deploy.dicom.process import Processor
    from cxrkit.deploy.dicom.spool import Spool

    cfg = build_config(spool=tmp_path / "spool", destinations=["PACS@127.0.0.1:9"], workers=0)
    spool = Spool(cfg.spool)
    study, files = _study(tmp_path, shared_data, "phase", n=2)
    for f in files:
        ds = pydicom.dcmread(f)
        spool.store_instance(f.read_bytes(), sop_uid=str(ds.SOPInstanceUID), study_uid=study,
                             sop_class_uid=str(ds.SOPClassUID), calling_aet="MOD")

    class Killed(BaseException):
        pass

    dead = Processor(bundle, cfg, spool)
    woken = []
    dead.on_reported = lambda: woken.append(1)

    def die(*a, **k):
        raise Killed

    dead._write_pictures = die
    with pytest.raises(Killed):
        dead.process_study(study)
    db = spool.conn()
    assert woken == [1], "delivery is woken as soon as the SR is queued"
    assert {r[0] for r in db.execute("SELECT state FROM instances")} == {"reported"}
    assert [r[0] for r in db.execute("SELECT kind FROM outbox")] == ["sr"]
    entry_id = db.execute("SELECT entry_id FROM outbox").fetchone()[0]
    assert not spool.entry_delivered(entry_id), "no retention while pictures are pending"
    assert spool.due_studies(0.0)[0] == [study], "a reported study is due again"

    again = Processor(bundle, cfg, spool)
    assert again.process_study(study) == entry_id
    kinds = sorted(r[0] for r in db.execute("SELECT kind FROM outbox WHERE entry_id = ?", (entry_id,)))
    assert kinds == ["sc", "sc", "sr"], "SR once, one SC per film"
    assert {r[0] for r in db.execute("SELECT state FROM instances")} == {"processed"}
    assert spool.due_studies(0.0)[0] == []
    sc_uids = {r[0] for r in db.execute("SELECT sop_uid FROM outbox WHERE kind = 'sc'")}
    assert sc_uids == {str(pydicom.dcmread(spool.root / r[0]).SOPInstanceUID)
                       for r in db.execute("SELECT path FROM outbox WHERE kind = 'sc'")}
    from cxrkit.deploy.dicom.worklist import read_worklist

    entry = [e for e in read_worklist(spool.root)
             if e["entry_id"] == entry_id][0]
    assert all(film["images"].get("film") for film in entry["films"]), "the worklist entry now has its pictures"
