"""The node and the service together: dcmtk's storescu sends real films to a running `cxr node` on 127.0.0.1, and the
REST service started on the node's spool (`worklist_spool`) lists them in priority order, validates every entry
against its documented schema, and serves the film and heatmap PNGs the node wrote."""
from __future__ import annotations

import time

import httpx
import pytest

peers = pytest.importorskip("dicom_peers")  # tests/dicom_peers.py of the node's tests (dcmtk helpers)
pytest.importorskip("pynetdicom")
pytest.importorskip("highdicom")
torch = pytest.importorskip("torch")
pytest.importorskip("fastapi")

KEY = "node-worklist-key-0123456789"
AUTH = {"X-API-Key": KEY}


def test_node_results_reach_the_worklist_api(make_tiny_bundle, tmp_path, shared_data):
    import cv2
    import numpy as np
    from pydicom.uid import generate_uid

    from cxrkit.bundle.format import read_bundle_config, write_bundle_config
    from cxrkit.deploy.dicom.config import build_config
    from cxrkit.deploy.dicom.node import Node
    from cxrkit.deploy.serve.app import create_app
    from cxrkit.deploy.serve.live import serve_in_thread

    peers.need_dcmtk()
    torch.set_num_threads(1)
    bundle = make_tiny_bundle(tmp_path / "bundle")
    cfg = read_bundle_config(bundle)  # Pneumothorax always positive (urgent), nothing else ever
    cfg["thresholds"] = {n: (0.0 if n == "Pneumothorax" else 1.01) for n in cfg["label_names"]}
    write_bundle_config(bundle, cfg)
    node = Node(bundle, build_config(port=peers.free_port(), spool=tmp_path / "spool", settle_seconds=0.3,
                                     workers=0)).start()
    try:
        urgent, other = generate_uid(), generate_uid()
        films = [peers.make_film(shared_data / peers.REAL_FILM, tmp_path / "films" / "a.dcm", study_uid=urgent),
                 peers.make_film(shared_data / peers.NOT_CHEST, tmp_path / "films" / "b.dcm", study_uid=other,
                                 modality="OT", body="ABDOMEN")]  # skipped: no entry
        sent = peers.storescu(node.port, *films)
        assert sent.returncode == 0, sent.stderr
        app = create_app(bundle, api_key=KEY, worklist_spool=node.spool.root, warm_up=False)
        with serve_in_thread(app) as url, httpx.Client(base_url=url, headers=AUTH, timeout=30) as c:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                r = c.get("/v1/worklist")
                # the entry appears with the SR (phase 1), its pictures a moment later (phase 2)
                if r.status_code == 200 and r.json()["total"] >= 1 and r.json()["entries"][0]["films"][0]["images"]:
                    break
                time.sleep(0.5)
            assert r.status_code == 200, r.text  # the response_model validated every entry the node wrote
            entries = r.json()["entries"]
            assert r.json()["total"] == 1, entries  # the abdomen study was skipped, not listed
            assert entries[0]["study_instance_uid"] == urgent and entries[0]["priority_label"] == "urgent"
            film = entries[0]["films"][0]
            assert set(film["images"]) >= {"film", "Pneumothorax"}
            for file in film["images"].values():
                img = c.get(f"/v1/worklist/{entries[0]['entry_id']}/images/{file}")
                assert img.status_code == 200 and img.headers["content-type"] == "image/png"
                assert cv2.imdecode(np.frombuffer(img.content, np.uint8), cv2.IMREAD_UNCHANGED).size > 0
            one = c.get(f"/v1/worklist/{entries[0]['entry_id']}")
            assert one.status_code == 200 and one.json()["films"] == entries[0]["films"]
    finally:
        node.stop()
