"""The processor: one settled study from the spool -> films read -> quality gate, prediction, heatmaps, boxes ->
SR + SC files, worklist images -> one transaction that queues the results and records the worklist entry.

A crash anywhere before that transaction leaves the instances ``received``: they are processed again after a
restart, and the half-written results of the dead run are deleted (:meth:`Spool.recover`).
"""
from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from cxrkit import __version__
from cxrkit.data.decode import DecodeLimits
from cxrkit.data.errors import CxrError
from cxrkit.deploy.dicom import worklist
from cxrkit.deploy.dicom.config import NodeConfig, NodeConfigError
from cxrkit.deploy.dicom.results import AlgorithmInfo, FilmResult, FindingResult, StudyResult
from cxrkit.deploy.dicom.sop import IMAGE_SOP_CLASSES
from cxrkit.deploy.dicom.spool import Instance, Spool

log = logging.getLogger("cxrkit.node")
WORKLIST_SIDE = 512   # long side of the worklist view's PNGs


@dataclass
class _Film:
    instance: Instance
    dataset: Any                      # pydicom Dataset (pixel data not decoded)
    image: np.ndarray | None = None
    meta: dict | None = None
    skip: str | None = None


class Processor:
    """Holds the model (fastest runtime the bundle has, plus torch for heatmaps when needed) and the gate."""

    def __init__(self, bundle: str | Path, config: NodeConfig, spool: Spool):
        from cxrkit.deploy.quality import QualityGate
        from cxrkit.deploy.runtime import load_fastest

        self.bundle, self.config, self.spool = Path(bundle), config, spool
        self.predictor, self.runtime = load_fastest(bundle, backend=config.backend, precision=config.precision,
                                                    threads=config.threads)
        self.gate = QualityGate.from_bundle(self.predictor)
        self.label_names = tuple(self.predictor.label_names)
        unknown = [n for n in config.report_findings if n not in self.label_names]
        if unknown:
            raise NodeConfigError(f"node config report_findings: {unknown} are not findings of this model; it "
                                  f"knows {', '.join(self.label_names)}")
        self.report = tuple(config.report_findings) or self.label_names
        self._explainer = None
        cfg = self.predictor.config
        from cxrkit.bundle.identity import model_id, model_version
        from cxrkit.bundle.synthetic import trained_on_synthetic

        self.algorithm = AlgorithmInfo(name="cxrkit", version=__version__, model_id=model_id(self.predictor),
                                       model_version=model_version(cfg),
                                       trained_on_synthetic=trained_on_synthetic(cfg))
        self.limits = DecodeLimits()
        self.on_reported: Callable[[], None] = lambda: None  # the study loop wakes delivery with it

    def explainer(self):
        """The torch model for heatmaps (the fast runtime may be an exported graph CAM cannot look inside)."""
        if self._explainer is None:
            if hasattr(self.predictor, "model") or hasattr(self.predictor, "members"):
                self._explainer = self.predictor
            else:
                from cxrkit.deploy.onnx_runtime import load_predictor

                self._explainer = load_predictor(self.bundle, backend="torch")
        return self._explainer

    def warm_up(self) -> None:
        yy, xx = np.mgrid[0:256, 0:256]
        film = (128 + 60 * np.sin(xx / 17.0) * np.cos(yy / 23.0)).astype(np.uint8)
        out = self.predictor.predict_full([film])
        if self.config.heatmaps and "cam" not in out:  # the torch explainer is only loaded when needed
            from cxrkit.explain import explain_images

            explain_images(self.explainer(), [film], [self.label_names[0]])

    # -- one study --------------------------------------------------------------------------------
    def process_study(self, study_uid: str) -> str | None:
        """Process the unprocessed instances of a study; returns the (last) worklist entry id, None if nothing
        was read. Films already reported (SR queued) whose pictures a killed run did not finish are done first,
        under their entry; films that arrived since are a new batch."""
        instances = self.spool.pending_instances(study_uid)
        entry_id = None
        reported: dict[str, list[Instance]] = {}
        for inst in instances:
            if inst.state == "reported" and inst.entry_id:
                reported.setdefault(inst.entry_id, []).append(inst)
        for done_id, batch in reported.items():
            entry_id = self._process_batch(study_uid, batch, done_id) or entry_id
        fresh = [inst for inst in instances if inst.state != "reported" or not inst.entry_id]
        if fresh:
            entry_id = self._process_batch(study_uid, fresh, None) or entry_id
        return entry_id

    def _process_batch(self, study_uid: str, instances: Sequence[Instance], reported_as: str | None) -> str | None:
        """Two commits, so the SR (the triage result) is not held back by the pictures: 1. the SR and the
        worklist entry are queued, films ``reported``; 2. the SC per film and the worklist pictures, films
        ``processed``. A kill between the two leaves the films ``reported``: the next run makes the pictures
        again (same model, same films, same maps) under the same entry, and does not send the SR twice."""
        films = [self._read(inst) for inst in instances]
        readable = [f for f in films if f.skip is None]
        for f in films:
            if f.skip:
                log.info("study %s instance %s skipped: %s", f.instance.study_key, f.instance.sop_key, f.skip)
        if not readable:
            self._commit(None, films, [], None, state="processed")
            return None
        results = self._predict(readable)
        tiers = [self._film_summary(f, r) for f, r in zip(readable, results)]
        tier, reason = worklist.priority_of(tiers, self.config.urgent_findings)
        study = StudyResult(study_instance_uid=study_uid, films=results, priority=tier, priority_reason=reason,
                            abnormality=max(r.abnormality for r in results),
                            skipped=[(f.instance.sop_key, f.skip) for f in films if f.skip])
        entry_id = reported_as or uuid.uuid4().hex[:16]
        entry = self._entry(entry_id, study, readable, tiers)
        n_objects = 0
        if reported_as is None:
            report = self._write_report(entry_id, study, readable)
            self._commit(entry_id, films, report, entry, state="reported", webhook=True)
            self.on_reported()
            n_objects += len(report)
        pictures = self._write_pictures(entry_id, study, readable)
        self._write_worklist_images(entry_id, readable, results, entry)
        self._commit(entry_id, readable, pictures, entry, state="processed")
        n_objects += len(pictures)
        if self.config.retention == "delete" and self.spool.entry_delivered(entry_id):
            self.spool.apply_retention(entry_id)  # no pictures to send, or the SR went out alone and first
        log.info("study %s processed: entry %s, priority %s (%s), %d film(s), %d skipped, %d result object(s)%s",
                 readable[0].instance.study_key, entry_id, worklist.PRIORITY_LABELS[tier], reason, len(results),
                 len(study.skipped), n_objects, "" if reported_as is None else " (pictures of an earlier run)")
        return entry_id

    def _read(self, inst: Instance) -> _Film:
        import pydicom

        from cxrkit.data.dicom import decode_dicom, is_chest_radiograph_header

        if inst.sop_class_uid not in IMAGE_SOP_CLASSES:
            return _Film(inst, None, skip=f"not an image object (SOP class {inst.sop_class_uid}); nothing to read")
        if inst.path is None or not inst.path.is_file():
            return _Film(inst, None, skip="the received file is no longer in the spool")
        try:
            ds = pydicom.dcmread(inst.path)
            image, meta = decode_dicom(ds, limits=self.limits, name=inst.sop_key)
        except CxrError as exc:
            return _Film(inst, None, skip=getattr(exc, "reason", str(exc)))
        except Exception as exc:  # noqa: BLE001 - one hostile file must not stop the study
            return _Film(inst, None, skip=f"unreadable DICOM ({type(exc).__name__})")
        ok, why = is_chest_radiograph_header(meta)
        if not ok:
            return _Film(inst, ds, skip=why)
        return _Film(inst, ds, image=image, meta=meta)

    def _predict(self, films: Sequence[_Film]) -> list[FilmResult]:
        from cxrkit.deploy.quality import quality_verdicts
        from cxrkit.explain.finding_boxes import boxes_for, graph_cam_serves

        images = [f.image for f in films]
        out = self.predictor.predict_full(images, batch_size=max(1, len(images)))
        verdicts = quality_verdicts(self.gate, images, [f.meta for f in films], out)
        pos = self.predictor.positives(out["probs"])
        results = []
        for j, film in enumerate(films):
            probs = out["probs"][j]
            positive = [n for n, p in zip(self.label_names, pos[j]) if p and n in self.report]
            # the graph's CAM when it is the bundle's map method, else the tuned maps from the torch model
            cam = out["cam"][j] if "cam" in out and graph_cam_serves(self.predictor) else None
            maps = self._heatmaps(film.image, positive, cam) if positive and self.config.heatmaps else {}
            method = ("cam" if cam is not None else self._method()) if maps else None
            findings = []
            for i, name in enumerate(self.label_names):
                if name not in self.report:
                    continue
                # up to the bundle's max_boxes per finding (tuned, else 3), found on a map of at most 256 px
                boxes = tuple(tuple(b[:4]) for b in boxes_for(self.predictor, name, maps[name], method,
                                                              film_shape=film.image.shape)) if name in maps else ()
                findings.append(FindingResult(name, float(probs[i]), float(self.predictor.thresholds[i]),
                                              bool(pos[j][i]), boxes))
            results.append(FilmResult(
                sop_instance_uid=film.instance.sop_uid, sop_class_uid=film.instance.sop_class_uid, image=film.image,
                findings=findings, abnormality=float(np.clip(out["abnormality"][j], 0.0, 1.0)),
                quality_ok=bool(verdicts[j]["ok"]), quality_reason=str(verdicts[j]["reason"]), heatmaps=maps,
                heatmap_method=method))
        return results

    def _heatmaps(self, image: np.ndarray, names: Sequence[str], cam: np.ndarray | None) -> dict[str, np.ndarray]:
        """Heatmaps of ``names``: from the exported graph's class maps of the same pass when it has them (no second
        forward), else from the torch model (the bundle's map method). At most 256 px (box_map_shape): the boxes
        are scaled to the film, the pictures (<= 1024 px) upsample a map made from a 5-40-cell grid anyway, and a
        full-size map of a 3,000-px CR film is 36 MB per finding."""
        from cxrkit.explain import explain_images
        from cxrkit.explain.cam import maps_from_graph
        from cxrkit.explain.finding_boxes import box_map_shape

        shape = box_map_shape(*image.shape)
        if cam is not None:
            idx = [self.label_names.index(n) for n in names]
            return dict(zip(names, maps_from_graph(self.predictor, cam, idx, *shape)))
        try:
            return explain_images(self.explainer(), [image], list(names), shapes=[shape])[0]
        except CxrError as exc:  # a model without a usable CAM layer still gets its SR, without regions
            log.warning("heatmaps unavailable: %s", exc)
            return {}

    def _method(self) -> str:
        from cxrkit.explain.cam import concrete_method

        return concrete_method(self.explainer())

    # -- outputs ----------------------------------------------------------------------------------
    def _film_summary(self, film: _Film, result: FilmResult) -> dict[str, Any]:
        return {"sop_key": film.instance.sop_key, "view": (film.meta or {}).get("view"),
                "abnormality": result.abnormality, "quality_ok": result.quality_ok,
                "quality_reason": result.quality_reason,
                "findings": [{"name": f.name, "probability": f.probability, "threshold": f.threshold,
                              "positive": f.positive, "boxes": [list(b) for b in f.boxes]}
                             for f in sorted(result.findings, key=lambda f: -f.probability)],
                "images": {}}

    def _write_report(self, entry_id: str, study: StudyResult, films: Sequence[_Film]) -> list[tuple[str, Path, str]]:
        """The SR file in SPOOL/results/<entry>/; [(kind, path, sop_uid)]."""
        from pydicom.uid import generate_uid

        from cxrkit.deploy.dicom.sr import build_sr

        folder = self._results_folder(entry_id)
        sr = build_sr(study, [f.dataset for f in films], self.algorithm, series_instance_uid=generate_uid(),
                      sop_instance_uid=generate_uid(), urgent=self.config.urgent_findings)
        return [("sr", self._save(folder / "sr.dcm", sr), str(sr.SOPInstanceUID))]

    def _write_pictures(self, entry_id: str, study: StudyResult,
                        films: Sequence[_Film]) -> list[tuple[str, Path, str]]:
        """One SC file per film (when enabled). Their UIDs derive from the entry and the film, so pictures made
        again after a kill are the same objects (a PACS stores them once)."""
        from pydicom.uid import generate_uid

        from cxrkit.deploy.dicom.sc import build_sc

        if not self.config.secondary_capture:
            return []
        folder = self._results_folder(entry_id)
        series = generate_uid(entropy_srcs=["cxrkit sc series", entry_id])
        outputs = []
        for k, (film, result) in enumerate(zip(films, study.films), start=1):
            sop_uid = generate_uid(entropy_srcs=["cxrkit sc", entry_id, film.instance.sop_uid])
            sc = build_sc(result, film.dataset, self.algorithm, series_instance_uid=series,
                          sop_instance_uid=sop_uid, instance_number=k)
            outputs.append(("sc", self._save(folder / f"sc_{k:03d}.dcm", sc), str(sc.SOPInstanceUID)))
        return outputs

    def _results_folder(self, entry_id: str) -> Path:
        folder = self.spool.root / "results" / entry_id
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        return folder

    def _save(self, path: Path, ds) -> Path:
        from io import BytesIO

        buf = BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        self.spool.write_file(path, buf.getvalue())
        return path

    def _entry(self, entry_id: str, study: StudyResult, films: Sequence[_Film],
               summaries: list[dict[str, Any]]) -> dict[str, Any]:
        ds = films[0].dataset
        return {"entry_id": entry_id, "study_key": films[0].instance.study_key,
                "study_instance_uid": study.study_instance_uid,
                "accession_number": str(ds.get("AccessionNumber", "") or "") or None,
                "study_date": str(ds.get("StudyDate", "") or "") or None,
                "received_at": self.spool.last_arrival(study.study_instance_uid),
                "processed_at": time.time(), "priority": study.priority, "priority_reason": study.priority_reason,
                "abnormality": study.abnormality, "quality_ok": all(r.quality_ok for r in study.films),
                "synthetic_model": self.algorithm.trained_on_synthetic, "films": summaries,
                "skipped": [{"sop_key": k, "reason": r} for k, r in study.skipped],
                "model_id": self.algorithm.model_id, "runtime": self.runtime.backend + "/" + self.runtime.precision}

    def _write_worklist_images(self, entry_id: str, films: Sequence[_Film], results: Sequence[FilmResult],
                               entry: dict[str, Any]) -> None:
        from cxrkit.explain.overlay import draw_boxes, fit_display, overlay

        folder = self.spool.root / worklist.IMAGES_DIR / entry_id
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        for film, result, summary in zip(films, results, entry["films"]):
            small, scale = fit_display(result.image, WORKLIST_SIDE)
            name = f"film_{film.instance.sop_key}.png"
            self.spool.write_file(folder / name, _png(small))
            summary["images"]["film"] = name
            for finding in result.positive_findings:
                if finding.name not in result.heatmaps:
                    continue
                rgb = overlay(small, result.heatmaps[finding.name])
                rgb = draw_boxes(rgb, [[v * scale for v in b] for b in finding.boxes])
                fname = f"{film.instance.sop_key}_{finding.name}.png"
                self.spool.write_file(folder / fname, _png(rgb[:, :, ::-1]))
                summary["images"][finding.name] = fname

    def _webhook_body(self, entry: dict[str, Any]) -> bytes:
        """The entry, de-identified unless the site opted in (``webhook_identifiers``)."""
        body = {k: v for k, v in entry.items() if k not in ("study_instance_uid", "accession_number")}
        if self.config.webhook_identifiers:
            body.update(study_instance_uid=entry["study_instance_uid"], accession_number=entry["accession_number"])
        body["priority_label"] = worklist.PRIORITY_LABELS[entry["priority"]]
        from cxrkit import RESEARCH_NOTICE

        body["notice"] = RESEARCH_NOTICE
        return json.dumps(body).encode()

    def _commit(self, entry_id: str | None, films: Sequence[_Film], outputs: list[tuple[str, Path, str]],
                entry: dict[str, Any] | None, *, state: str, webhook: bool = False) -> None:
        """One transaction: the outputs queued for every destination (and the webhook), the worklist entry
        written (or replaced, now with its pictures), the films moved to ``state`` (skipped ones to
        ``skipped``)."""
        now = time.time()
        rows = []
        if entry_id is not None and entry is not None:
            for kind, path, sop_uid in outputs:
                for dest in self.config.destinations:
                    rows.append((entry_id, kind, sop_uid, str(path.relative_to(self.spool.root)), str(dest), now, now))
            if webhook and self.config.webhook_url:
                hook = self.spool.root / "results" / entry_id / "webhook.json"
                self.spool.write_file(hook, self._webhook_body(entry))
                rows.append((entry_id, "webhook", None, str(hook.relative_to(self.spool.root)),
                             self.config.webhook_url, now, now))
        with self.spool.transaction() as conn:
            conn.executemany("INSERT INTO outbox (entry_id, kind, sop_uid, path, destination, next_attempt_at, "
                             "created_at) VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
            if entry is not None:
                worklist.add_entry(conn, entry)
            for f in films:
                conn.execute("UPDATE instances SET state = ?, reason = ?, entry_id = ? WHERE sop_uid = ?",
                             ("skipped" if f.skip else state, f.skip, None if f.skip else entry_id,
                              f.instance.sop_uid))


def _png(image: np.ndarray) -> bytes:
    """PNG bytes of a grey or BGR image at zlib level 1: the worklist's pictures are looked at, not archived, and
    the default level took 20 ms a picture on the node's critical path."""
    import cv2

    ok, buf = cv2.imencode(".png", np.ascontiguousarray(image), [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise CxrError("OpenCV could not encode a worklist picture as PNG")
    return buf.tobytes()
