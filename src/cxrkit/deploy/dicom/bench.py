"""`cxr bench node`: a real `cxr node` process (settle 0), dcmtk's storescu as the modality, a pynetdicom SCP in
this process as the PACS recording when each SR arrives. Latency = SR arrival - the node's record of the film's
arrival (same clock, same machine); throughput = single-image studies per minute from ``senders`` concurrent
storescu loops, with the node's RSS sampled every second and every study checked for its SR (0 lost)."""
from __future__ import annotations

import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from cxrkit.data.errors import CxrError

SR_CLASSES = ("1.2.840.10008.5.1.4.1.1.88.33", "1.2.840.10008.5.1.4.1.1.88.34")


class BenchError(CxrError):
    """The node benchmark cannot run (dcmtk missing, node did not start...)."""


def find_dcmtk(tool: str) -> str | None:
    """The path of a dcmtk tool on PATH, skipping this Python's own bin folder: pynetdicom installs console
    scripts of the same names (storescu, storescp, echoscu...) that take other options."""
    import os

    own = Path(sys.executable).parent.resolve()
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        candidate = Path(folder) / tool
        if folder and candidate.is_file() and os.access(candidate, os.X_OK) and candidate.parent.resolve() != own:
            return str(candidate)
    return None


# dcmtk's storescu offers uncompressed transfer syntaxes only unless told which compressed one to propose
STORESCU_PROPOSE = {"1.2.840.10008.1.2.4.50": "-xy", "1.2.840.10008.1.2.4.51": "-xx", "1.2.840.10008.1.2.4.70": "-xs",
                    "1.2.840.10008.1.2.4.57": "-xs", "1.2.840.10008.1.2.4.80": "-xt", "1.2.840.10008.1.2.4.81": "-xu",
                    "1.2.840.10008.1.2.4.90": "-xv", "1.2.840.10008.1.2.4.91": "-xw", "1.2.840.10008.1.2.5": "-xr",
                    "1.2.840.10008.1.2.1.99": "-xd"}


def storescu_propose(syntax: str) -> list[str]:
    """The storescu option that offers ``syntax`` (none for the uncompressed ones)."""
    return [STORESCU_PROPOSE[syntax]] if syntax in STORESCU_PROPOSE else []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _template(film: Path | None):
    """The film every study is a copy of: the user's DICOM, or a generated 1024 x 1024 8-bit CR."""
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    if film is not None:
        return pydicom.dcmread(film)
    yy, xx = np.mgrid[0:1024, 0:1024]
    pixels = (110 + 50 * np.sin(xx / 37.0) * np.cos(yy / 53.0) + 30 * np.exp(-((xx - 512) ** 2) / 9e4)).astype(np.uint8)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("bench.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.PatientName, ds.PatientID, ds.PatientSex, ds.PatientBirthDate = "BENCH^FILM", "BENCH", "O", ""
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition, ds.StudyDate = "CR", "CHEST", "PA", "20260101"
    ds.StudyID, ds.SeriesNumber, ds.InstanceNumber, ds.AccessionNumber = "1", 1, 1, "BENCH"
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = 1024, 1024, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = pixels.tobytes()
    ds.StudyInstanceUID = ds.SeriesInstanceUID = ds.SOPInstanceUID = generate_uid()
    return ds


def _write_study(template, folder: Path, name: str) -> tuple[Path, str]:
    from pydicom.uid import generate_uid

    template.StudyInstanceUID, template.SeriesInstanceUID = generate_uid(), generate_uid()
    template.SOPInstanceUID = template.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    path = folder / f"{name}.dcm"
    template.save_as(path, enforce_file_format=True)
    return path, str(template.StudyInstanceUID)


class _Pacs:
    """The destination: records the arrival time of each study's SR."""

    def __init__(self):
        from pynetdicom import AE, evt

        self.arrivals: dict[str, float] = {}
        self.objects = 0
        self._lock = threading.Lock()
        ae = AE(ae_title="BENCHPACS")
        for cls in (*SR_CLASSES, "1.2.840.10008.5.1.4.1.1.7"):
            ae.add_supported_context(cls, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
        ae.maximum_associations = 16
        self.port = _free_port()
        self.server = ae.start_server(("127.0.0.1", self.port), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, self._store)])

    def _store(self, event) -> int:
        now = time.time()
        sop_class = str(event.request.AffectedSOPClassUID)
        with self._lock:
            self.objects += 1
            if sop_class in SR_CLASSES:
                study = str(event.dataset.StudyInstanceUID)
                self.arrivals.setdefault(study, now)
        return 0x0000

    def stop(self) -> None:
        self.server.shutdown()


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (the node and its worker processes; Linux /proc)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            todo += [int(c) for c in Path(f"/proc/{p}/task/{p}/children").read_text().split()]
        except OSError:
            pass
    return out


def _rss_mb(pid: int) -> float | None:
    """Resident memory of the node with its worker processes (MB); None once the node is gone."""
    total, seen = 0.0, False
    for p in _tree(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) / 1024.0
                    seen = True
        except OSError:
            continue
    return total if seen else None


def _send(port: int, path: Path, syntax: str) -> bool:
    out = subprocess.run([find_dcmtk("storescu") or "storescu", *storescu_propose(syntax), "-aet", "BENCHMOD",
                          "-aec", "CXRKIT", "127.0.0.1", str(port), str(path)], capture_output=True, timeout=120)
    return out.returncode == 0


def _wait(pacs: _Pacs, studies, timeout: float, stall: float | None = None, say=None) -> None:
    """Until every study's SR arrived, ``timeout`` passed, or (with ``stall``) no SR arrived for that long;
    ``say`` gets a line every 30 s."""
    end = time.time() + timeout
    last, seen = time.time(), len(pacs.arrivals)
    next_say = time.time() + 30
    while time.time() < end and any(s not in pacs.arrivals for s in studies):
        if say is not None and time.time() >= next_say:
            next_say += 30
            say(f"draining: {sum(s in pacs.arrivals for s in studies)}/{len(studies)} delivered")
        if len(pacs.arrivals) != seen:
            last, seen = time.time(), len(pacs.arrivals)
        elif stall is not None and time.time() - last > stall:
            return
        time.sleep(0.01)


def _received_at(spool: Path) -> dict[str, float]:
    conn = sqlite3.connect(f"file:{spool / 'node.db'}?mode=ro", uri=True, timeout=10)
    try:
        return {s: t for s, t in conn.execute("SELECT study_uid, MAX(received_at) FROM instances GROUP BY study_uid")}
    finally:
        conn.close()


def _pct(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)), 3) if values else float("nan")


def run_bench(bundle: str | Path, *, film: Path | None = None, latency_studies: int = 50, duration_s: float = 300.0,
              senders: int = 4, workers: int | None = None, startup_timeout: float = 300.0,
              progress=None) -> dict:
    """``progress(line)`` gets a line per phase and every 30 s (the whole bench takes minutes)."""
    say = progress or (lambda line: None)
    if find_dcmtk("storescu") is None:
        raise BenchError("cxr bench node needs dcmtk's storescu (Debian: apt-get install dcmtk)")
    work = Path(tempfile.mkdtemp(prefix="cxr-bench-node-"))
    pacs = _Pacs()
    port = _free_port()
    spool = work / "spool"
    cmd = [str(Path(sys.executable).with_name("cxr")), "node", str(bundle), "--port", str(port), "--spool",
           str(spool), "--settle", "0", "--destination", f"BENCHPACS@127.0.0.1:{pacs.port}", "--log-level", "warning",
           "--max-associations", str(max(8, senders * 2)),
           *([] if workers is None else ["--workers", str(workers)])]
    log = open(work / "node.log", "wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_listening(proc, port, startup_timeout, work / "node.log")
        say(f"node listening on port {port}; latency phase: {latency_studies} studies one at a time")
        template = _template(film)
        syntax = str(template.file_meta.TransferSyntaxUID)
        files = work / "films"
        files.mkdir()
        # -- latency: one study at a time -------------------------------------------------------------
        lat_studies = []
        for i in range(latency_studies):
            path, study = _write_study(template, files, f"lat{i}")
            if _send(port, path, syntax):
                lat_studies.append(study)
                _wait(pacs, [study], 60)
            path.unlink()
            if i == 2 and not lat_studies:
                raise BenchError("storescu could not send the film 3 times; check the node log in "
                                 f"{work / 'node.log'}")
            if (i + 1) % 10 == 0:
                say(f"latency phase: {i + 1}/{latency_studies} studies")
        received = _received_at(spool)
        latencies = [pacs.arrivals[s] - received[s] for s in lat_studies if s in pacs.arrivals and s in received]
        say(f"latency p50 {_pct(latencies, 50)} s, p99 {_pct(latencies, 99)} s, max {_pct(latencies, 100)} s; "
            f"load phase: {senders} senders for {duration_s:g} s")
        # -- sustained load ---------------------------------------------------------------------------
        sent: list[str] = []
        failures = [0]
        lock = threading.Lock()
        stop_at = time.time() + duration_s
        rss: list[tuple[float, float]] = []

        def sender(k: int) -> None:
            import copy

            tpl = copy.deepcopy(template)
            n = 0
            while time.time() < stop_at:
                path, study = _write_study(tpl, files, f"s{k}_{n}")
                ok = _send(port, path, syntax)
                path.unlink()
                with lock:
                    if ok:
                        sent.append(study)
                    else:
                        failures[0] += 1
                n += 1

        threads = [threading.Thread(target=sender, args=(k,), daemon=True) for k in range(senders)]
        t0 = time.time()
        for t in threads:
            t.start()
        next_say = t0 + 30
        while any(t.is_alive() for t in threads):
            value = _rss_mb(proc.pid)
            if value is not None:
                rss.append((round(time.time() - t0, 1), round(value, 1)))
            if time.time() >= next_say:
                next_say += 30
                say(f"load {time.time() - t0:.0f}/{duration_s:g} s: {len(sent)} sent, {len(pacs.arrivals)} SRs "
                    f"delivered, node RSS {value} MB")
            time.sleep(1.0)
        load_end = time.time()
        say(f"load done: {len(sent)} sent, {len([s for s in sent if s in pacs.arrivals])} of them delivered in "
            f"{time.time() - t0:.0f} s; waiting for the backlog to drain")
        # the backlog drains as long as results keep coming; "lost" = never delivered although the node kept going
        _wait(pacs, list(sent), 3600, stall=60, say=say)
        elapsed, drain = load_end - t0, time.time() - load_end
        delivered = [s for s in sent if s in pacs.arrivals]
        in_window = [s for s in delivered if pacs.arrivals[s] <= load_end]
        received = _received_at(spool)
        load_lat = [pacs.arrivals[s] - received[s] for s in delivered if s in received]
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        pacs.stop()
    rss_values = [v for _, v in rss]
    half = len(rss_values) // 2
    result = {
        "command": " ".join(["cxr", "bench", "node", str(bundle), f"--latency-studies {latency_studies}",
                             f"--duration {duration_s:g}", f"--senders {senders}"]
                            + ([] if workers is None else [f"--workers {workers}"])),
        "film": str(film) if film else "generated 1024 x 1024 8-bit CR",
        "latency_s": {"n": len(latencies), "p50": _pct(latencies, 50), "p99": _pct(latencies, 99),
                      "max": _pct(latencies, 100)},
        "load": {"senders": senders, "duration_s": round(elapsed, 1), "studies_sent": len(sent),
                 "studies_delivered": len(delivered), "lost": len(sent) - len(delivered),
                 "send_failures": failures[0], "backlog_drain_s": round(drain, 1),
                 "studies_per_min": round(len(in_window) / max(elapsed, 1e-9) * 60.0, 1),
                 "sent_per_min": round(len(sent) / max(elapsed, 1e-9) * 60.0, 1),
                 "latency_p50_s": _pct(load_lat, 50), "latency_p99_s": _pct(load_lat, 99)},
        "rss_mb": {"first": rss_values[0] if rss_values else None, "max": max(rss_values) if rss_values else None,
                   "last": rss_values[-1] if rss_values else None,
                   "mean_first_half": round(float(np.mean(rss_values[:half])), 1) if half else None,
                   "mean_second_half": round(float(np.mean(rss_values[half:])), 1) if half else None},
        "rss_samples": rss,
        "work_dir": str(work),
    }
    result["markdown"] = _markdown(result)
    shutil.rmtree(work / "films", ignore_errors=True)
    return result


def _wait_listening(proc, port: int, timeout: float, log: Path) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            raise BenchError(f"cxr node exited with {proc.returncode}: {log.read_text(errors='replace')[-2000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise BenchError(f"cxr node did not listen within {timeout:g} s")


def _markdown(r: dict) -> str:
    lat, load, rss = r["latency_s"], r["load"], r["rss_mb"]
    return "\n".join([
        f"`{r['command']}` ({r['film']})", "",
        "| measure | value |", "|---|---|",
        f"| latency, last film in -> SR at destination, one study at a time (n={lat['n']}) | p50 {lat['p50']} s, "
        f"p99 {lat['p99']} s, max {lat['max']} s |",
        f"| sustained, {load['senders']} storescu senders, {load['duration_s']} s | {load['studies_per_min']} "
        f"studies/min delivered during the load ({load['sent_per_min']}/min sent); backlog drained "
        f"{load['backlog_drain_s']} s after it; {load['studies_delivered']}/{load['studies_sent']} delivered, "
        f"{load['lost']} lost, {load['send_failures']} send failures |",
        f"| latency under that load | p50 {load['latency_p50_s']} s, p99 {load['latency_p99_s']} s |",
        f"| node RSS with its workers (MB) | first {rss['first']}, max {rss['max']}, last {rss['last']}; "
        f"mean first half {rss['mean_first_half']}, second half {rss['mean_second_half']} |",
    ])
