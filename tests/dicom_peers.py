"""Real DICOM peers for the node's tests: chest films made from the real CR film, dcmtk's storescp as the PACS,
storescu / echoscu as the modality, and the node itself in-process or as a `cxr node` process. 127.0.0.1 only."""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REAL_FILM = "dicom/cr_monochrome2_jpeg_baseline.dcm"
NOT_CHEST = "dicom/not_chest_abdomen_ot.dcm"
DCMTK = ("storescu", "storescp", "echoscu", "dsrdump", "dcmcjpeg")
CXR = Path(sys.executable).with_name("cxr")


def tool(name: str) -> str:
    """dcmtk's tool, never pynetdicom's console script of the same name in the venv."""
    from cxrkit.deploy.dicom.bench import find_dcmtk

    return find_dcmtk(name) or name


def need_dcmtk() -> None:
    from cxrkit.deploy.dicom.bench import find_dcmtk

    missing = [t for t in DCMTK if find_dcmtk(t) is None]
    if missing:
        pytest.skip(f"needs Debian's dcmtk ({', '.join(missing)} missing): apt-get install dcmtk")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 20.0) -> None:
    end = time.time() + timeout
    while time.time() < end:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def make_film(src: Path, out: Path, *, study_uid: str, sop_uid: str | None = None, series_uid: str | None = None,
              view: str = "PA", modality: str = "CR", body: str = "CHEST", syntax: str | None = None,
              sop_class: str | None = None, accession: str = "ACC0001", size: int | None = None) -> Path:
    """A copy of a real film with new UIDs / view / modality, re-encoded in ``syntax`` (pydicom encoders, or
    dcmtk's dcmcjpeg for JPEG lossless, which pydicom cannot write)."""
    import cv2
    import pydicom
    from pydicom import uid

    ds = pydicom.dcmread(src)
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid or uid.generate_uid()
    ds.SOPInstanceUID = sop_uid or uid.generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    if sop_class:
        ds.SOPClassUID = sop_class
        ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.ViewPosition, ds.Modality, ds.BodyPartExamined, ds.AccessionNumber = view, modality, body, accession
    keep_jpeg = syntax in (None, str(uid.JPEGBaseline8Bit)) and size is None
    if not keep_jpeg:
        pixels = ds.pixel_array
        if size is not None:
            pixels = cv2.resize(pixels, (size, size), interpolation=cv2.INTER_AREA)
        ds.PixelData = pixels.tobytes()
        ds.Rows, ds.Columns = pixels.shape
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.file_meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
        for kw in ("LossyImageCompression", "LossyImageCompressionRatio", "LossyImageCompressionMethod"):
            if kw in ds:
                delattr(ds, kw)
        ds["PixelData"].VR = "OB" if ds.BitsAllocated == 8 else "OW"
        syntax = syntax or str(uid.ExplicitVRLittleEndian)
        if syntax in (str(uid.RLELossless), str(uid.JPEG2000Lossless), str(uid.JPEGLSLossless)):
            ds.compress(syntax)
        elif syntax == str(uid.DeflatedExplicitVRLittleEndian):
            ds.file_meta.TransferSyntaxUID = uid.DeflatedExplicitVRLittleEndian
        elif syntax == str(uid.ImplicitVRLittleEndian):
            ds.file_meta.TransferSyntaxUID = uid.ImplicitVRLittleEndian
    out.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(out, enforce_file_format=True)
    if syntax == str(uid.JPEGLosslessSV1):
        tmp = out.with_suffix(".sv1")
        subprocess.run([tool("dcmcjpeg"), "+e1", str(out), str(tmp)], check=True, capture_output=True, timeout=60)
        os.replace(tmp, out)
    return out


class StoreSCP:
    """dcmtk's storescp as the PACS: every received object in ``folder``, every C-STORE request in its log."""

    def __init__(self, folder: Path, aet: str = "PACS", port: int | None = None):
        self.folder, self.aet, self.port = Path(folder), aet, port or free_port()
        self.folder.mkdir(parents=True, exist_ok=True)
        self.log = self.folder.parent / f"{self.folder.name}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "StoreSCP":
        self._fh = open(self.log, "ab")
        # -uf: files named by SOP Instance UID; -v: one "Received Store Request" line per C-STORE
        self.proc = subprocess.Popen([tool("storescp"), "-v", "-aet", self.aet, "-od", str(self.folder), "-uf", "+xa",
                                      str(self.port)], stdout=self._fh, stderr=subprocess.STDOUT)
        wait_port(self.port)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None
            self._fh.close()

    def files(self) -> list[Path]:
        return sorted(p for p in self.folder.iterdir() if p.is_file())

    def store_requests(self) -> int:
        return len(re.findall(r"Received Store Request", self.log.read_text(errors="replace")))

    def wait_for(self, n: int, timeout: float = 60.0) -> list[Path]:
        end = time.time() + timeout
        while time.time() < end:
            files = [f for f in self.files() if not f.name.startswith(".")]
            if len(files) >= n:
                time.sleep(0.2)  # storescp writes then renames; let the last one land
                return self.files()
            time.sleep(0.1)
        raise TimeoutError(f"{self.aet} received {len(self.files())} object(s), expected {n}; log:\n"
                           f"{self.log.read_text(errors='replace')[-3000:]}")


def storescu(port: int, *files: Path, aet: str = "MODALITY", aec: str = "CXRKIT", extra: tuple[str, ...] = (),
             timeout: float = 60.0) -> subprocess.CompletedProcess:
    """One association sending ``files`` (all in the same transfer syntax)."""
    import pydicom

    from cxrkit.deploy.dicom.bench import storescu_propose

    propose = storescu_propose(str(pydicom.dcmread(files[0], stop_before_pixels=True).file_meta.TransferSyntaxUID))
    return subprocess.run([tool("storescu"), *propose, "-aet", aet, "-aec", aec, *extra, "127.0.0.1", str(port),
                           *map(str, files)],
                          capture_output=True, text=True, timeout=timeout)


def echoscu(port: int, aet: str = "MODALITY", aec: str = "CXRKIT") -> subprocess.CompletedProcess:
    return subprocess.run([tool("echoscu"), "-aet", aet, "-aec", aec, "127.0.0.1", str(port)], capture_output=True,
                          text=True, timeout=30)


def read_objects(files: list[Path]):
    import pydicom

    return [pydicom.dcmread(f) for f in files]


class NodeProcess:
    """`cxr node` as a real process (for kill -9 and the benchmark)."""

    def __init__(self, bundle: Path, spool: Path, port: int, destinations: list[str], settle: float = 1.0,
                 extra: tuple[str, ...] = ()):
        self.args = [str(CXR), "node", str(bundle), "--port", str(port), "--spool", str(spool), "--settle",
                     str(settle), *[a for d in destinations for a in ("--destination", d)], *extra]
        self.port, self.log = port, spool.parent / f"{spool.name}.log"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 120.0) -> "NodeProcess":
        self._fh = open(self.log, "ab")
        self.proc = subprocess.Popen(self.args, stdout=self._fh, stderr=subprocess.STDOUT)
        end = time.time() + timeout
        while time.time() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"cxr node exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            time.sleep(0.1)
        raise TimeoutError(f"cxr node did not listen within {timeout} s:\n{self.log.read_text()[-3000:]}")

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self._fh.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)
            self._fh.close()


def spool_counts(spool: Path) -> dict:
    out = subprocess.run([str(CXR), "node", "status", str(spool)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)
