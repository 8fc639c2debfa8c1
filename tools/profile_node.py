"""Where the DICOM node's processing time goes, per step, for one-film studies (in-process, no network).

    python tools/profile_node.py BUNDLE FILM.dcm [--studies 8] [--clock thread|wall]

``--clock thread`` (default) reports the CPU time of the processing thread (steady on a busy machine; runtime
threads such as OpenVINO's are not counted), ``wall`` the elapsed time. Two findings are made always-positive so
heatmaps, boxes and SR regions are part of every study. The figures in docs/benchmarks.md come from this script.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("film", type=Path)
    ap.add_argument("--studies", type=int, default=8)
    ap.add_argument("--clock", choices=("thread", "wall"), default="thread")
    args = ap.parse_args()
    warnings.simplefilter("ignore")  # highdicom's person-name warnings for test films
    import pydicom
    from pydicom.uid import generate_uid

    from cxrkit.deploy.dicom import process, sc, sr
    from cxrkit.deploy.dicom.config import build_config
    from cxrkit.deploy.dicom.spool import Spool

    clock = time.thread_time if args.clock == "thread" else time.perf_counter
    work = Path(tempfile.mkdtemp(prefix="cxr-profile-node-"))
    cfg = build_config(spool=work / "spool", destinations=["NONE@127.0.0.1:9"])
    spool = Spool(cfg.spool)
    proc = process.Processor(args.bundle, cfg, spool)
    proc.warm_up()
    proc.predictor.thresholds[:] = 1.01
    proc.predictor.thresholds[[2, 7]] = 0.0  # Effusion, Pneumothorax always positive
    timers: dict[str, list[float]] = {}

    def timed(owner, name):
        inner = getattr(owner, name)

        def wrapper(*a, **k):
            t = clock()
            try:
                return inner(*a, **k)
            finally:
                timers.setdefault(name, []).append(clock() - t)
        setattr(owner, name, wrapper)

    for name in ("_read", "_predict", "_heatmaps", "_write_report", "_write_pictures", "_write_worklist_images",
                 "_commit"):
        timed(proc, name)
    timed(sr, "build_sr")
    timed(sc, "build_sc")
    studies = []
    for i in range(args.studies + 1):
        ds = pydicom.dcmread(args.film)
        ds.StudyInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid()
        path = work / f"{i}.dcm"
        ds.save_as(path, enforce_file_format=True)
        spool.store_instance(path.read_bytes(), sop_uid=str(ds.SOPInstanceUID), study_uid=str(ds.StudyInstanceUID),
                             sop_class_uid=str(ds.SOPClassUID), calling_aet="PROFILE")
        studies.append(str(ds.StudyInstanceUID))
    total = []
    for study in studies:
        t = clock()
        proc.process_study(study)
        total.append(clock() - t)
    print(f"runtime {proc.runtime.backend}/{proc.runtime.precision}; clock {args.clock}; "
          f"{args.studies} studies (first one dropped)")
    print(f"{'process_study':24s} median {statistics.median(total[1:]) * 1000:7.1f} ms")
    for name, values in timers.items():
        print(f"  {name:22s} median {statistics.median(values[1:]) * 1000:7.1f} ms")


if __name__ == "__main__":
    main()
