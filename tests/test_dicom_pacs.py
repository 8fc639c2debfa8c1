"""The node as a real `cxr node` process inside a PACS loop: Debian's Orthanc as the PACS (study uploaded over REST,
sent to the node by Orthanc, results found back in the same study through Orthanc's REST API), and kill -9 of the
node at several moments of a study's life, restarted, with every result delivered and none twice. 127.0.0.1 only."""
from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from dicom_peers import REAL_FILM, NodeProcess, StoreSCP, free_port, make_film, need_dcmtk, spool_counts, storescu, \
    wait_port

pytest.importorskip("pynetdicom")
pytest.importorskip("highdicom")
pytestmark = pytest.mark.slow
SR_CLASSES = ("1.2.840.10008.5.1.4.1.1.88.33", "1.2.840.10008.5.1.4.1.1.88.34")


@pytest.fixture(scope="module")
def bundle(make_tiny_bundle, tmp_path_factory):
    from test_dicom_node import node_bundle

    return node_bundle(make_tiny_bundle, tmp_path_factory.mktemp("bundle") / "bundle")


class Orthanc:
    def __init__(self, folder: Path, node_port: int):
        self.http, self.dicom = free_port(), free_port()
        folder.mkdir(parents=True, exist_ok=True)
        self.config = folder / "orthanc.json"
        self.config.write_text(json.dumps({
            "Name": "cxrkit-test", "StorageDirectory": str(folder / "db"), "IndexDirectory": str(folder / "db"),
            "HttpPort": self.http, "DicomPort": self.dicom, "DicomAet": "ORTHANC", "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False, "DicomCheckCalledAet": True, "DicomAlwaysAllowStore": True,
            "DicomModalities": {"cxrkit": ["CXRKIT", "127.0.0.1", node_port]}, "Plugins": [],
            "HttpTimeout": 30, "DicomScuTimeout": 30, "StableAge": 1}))
        self.log = folder / "orthanc.log"

    def start(self) -> "Orthanc":
        self._fh = open(self.log, "ab")
        self.proc = subprocess.Popen(["Orthanc", str(self.config)], stdout=self._fh, stderr=subprocess.STDOUT)
        wait_port(self.http, 60)
        wait_port(self.dicom, 60)
        return self

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)
        self._fh.close()

    def rest(self, path: str, data: bytes | None = None, method: str | None = None):
        req = urllib.request.Request(f"http://127.0.0.1:{self.http}{path}", data=data, method=method)
        with urllib.request.urlopen(req, timeout=60) as resp:
            return json.loads(resp.read() or b"null")


@pytest.mark.skipif(shutil.which("Orthanc") is None, reason="needs Debian's orthanc (apt-get install orthanc)")
def test_orthanc_round_trip(bundle, tmp_path, shared_data):
    from pydicom.uid import generate_uid

    need_dcmtk()
    node_port = free_port()
    orthanc = Orthanc(tmp_path / "orthanc", node_port).start()
    node = NodeProcess(bundle, tmp_path / "spool", node_port, [f"ORTHANC@127.0.0.1:{orthanc.dicom}"], settle=1.0)
    try:
        node.start()
        film = make_film(shared_data / REAL_FILM, tmp_path / "film.dcm", study_uid=generate_uid())
        uploaded = orthanc.rest("/instances", film.read_bytes(), "POST")
        study_id = uploaded["ParentStudy"]
        job = orthanc.rest("/modalities/cxrkit/store", study_id.encode(), "POST")  # Orthanc -> node (C-STORE)
        assert job is not None
        end = time.time() + 90
        instances = []
        while time.time() < end:
            instances = orthanc.rest(f"/studies/{study_id}/instances")
            if len(instances) >= 3:
                break
            time.sleep(0.5)
        assert len(instances) == 3, (instances, node.log.read_text()[-2000:])  # film + SR + SC, same study
        classes = {orthanc.rest(f"/instances/{i['ID']}/tags?simplify")["SOPClassUID"] for i in instances}
        assert classes & set(SR_CLASSES) and "1.2.840.10008.5.1.4.1.1.7" in classes
        series = orthanc.rest(f"/studies/{study_id}/series")
        assert len(series) == 3  # the film's series plus one new series per output
    finally:
        node.stop()
        orthanc.stop()


def test_kill9_at_every_stage_delivers_each_result_once(bundle, tmp_path, shared_data):
    import pydicom
    from pydicom.uid import generate_uid

    need_dcmtk()
    pacs = StoreSCP(tmp_path / "pacs").start()
    port = free_port()
    node = NodeProcess(bundle, tmp_path / "spool", port, [f"PACS@127.0.0.1:{pacs.port}"], settle=1.0)
    studies: dict[str, int] = {}
    try:
        node.start()
        # 1) killed while the study is still settling (films stored, nothing processed yet)
        study = generate_uid()
        films = [make_film(shared_data / REAL_FILM, tmp_path / f"a{k}.dcm", study_uid=study) for k in range(2)]
        assert storescu(port, *films).returncode == 0
        studies[study] = len(films)
        node.kill9()
        # 2) killed at later moments: just after the 1 s settle (processing) and later (delivery); each restart
        # costs a model load, so two moments, not more
        for k, delay in enumerate((1.15, 1.8)):
            node.start()
            study = generate_uid()
            film = make_film(shared_data / REAL_FILM, tmp_path / f"b{k}.dcm", study_uid=study)
            assert storescu(port, film).returncode == 0
            studies[study] = 1
            time.sleep(delay)
            node.kill9()
        node.start()
        expected = sum(1 + n for n in studies.values())  # one SR + one SC per film
        files = pacs.wait_for(expected, timeout=120)
        objs = [pydicom.dcmread(f) for f in files]
        for study, n in studies.items():
            mine = [o for o in objs if o.StudyInstanceUID == study]
            srs = {o.SOPInstanceUID for o in mine if o.SOPClassUID in SR_CLASSES}
            scs = {o.SOPInstanceUID for o in mine if o.SOPClassUID not in SR_CLASSES}
            assert len(srs) == 1 and len(scs) == n, (study, len(srs), len(scs))
        assert len(objs) == expected  # nothing from a dead processing run was ever sent
        time.sleep(1.0)
        counts = spool_counts(tmp_path / "spool")
        assert counts["results"] == {"sent": expected}, counts
        assert counts["instances"] == {"processed": sum(studies.values())}, counts
        # a re-send after a kill between the PACS's success and the spool's record reuses the same SOP Instance UID
        assert pacs.store_requests() >= expected
    finally:
        node.stop()
        pacs.stop()
