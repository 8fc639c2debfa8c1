"""What the service does with one upload, independent of HTTP: decode safely, run the model (batched) with the
quality gate, draw heatmaps, describe the model."""
from __future__ import annotations

import base64
import hashlib
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from cxrkit import RESEARCH_NOTICE, __version__
from cxrkit.data.decode import DecodeLimits, decode_bytes_with_meta, sniff_format
from cxrkit.data.errors import CxrError, ImageError

HEATMAP_MAX_SIDE = 512
# CAM maps are coarse (7 x 7 cells for DenseNet-121 at 224 px): overlays at a long side of 128 px lose nothing
# and keep 14 of them around 100 KB; clients scale them to the image (browsers interpolate smoothly).
OVERLAY_MAX_SIDE = 128


class UnsupportedImage(ImageError):
    """The upload is not PNG, JPEG or DICOM Part 10 (answered with 415)."""


class RequestError(CxrError):
    """A request asked for something this model or backend cannot do (answered with 400)."""


def model_id(predictor) -> str:
    """A short content hash of the bundle (every config.json and safetensors file in it, ensemble members and the
    quality gate included, plus the ONNX file when that backend runs): changes whenever the model does."""
    h = hashlib.sha256()
    path = getattr(predictor, "path", None)
    files = []
    if path is not None and Path(path).is_dir():
        files = sorted(Path(path).rglob("config.json")) + sorted(Path(path).rglob("*.safetensors"))
    onnx = getattr(predictor, "onnx_path", None)
    if onnx is not None:
        files.append(Path(onnx))
    files = [f for f in files if f.is_file()]
    if not files:  # an in-memory predictor: hash what defines it
        import json

        h.update(json.dumps(predictor.config, sort_keys=True, default=str).encode())
    for f in files:
        h.update(str(f.relative_to(path) if path is not None and f.is_relative_to(path) else f.name).encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return "sha256:" + h.hexdigest()[:16]


def decode_upload(data: bytes, limits: DecodeLimits) -> tuple[np.ndarray, dict[str, Any]]:
    """Upload bytes -> (uint8 grey image, metadata). Raises ImageError (UnsupportedImage for other formats)."""
    try:
        image, meta = decode_bytes_with_meta(data, name="upload", limits=limits)
    except ImageError as exc:
        if data and sniff_format(data) is None:
            raise UnsupportedImage("upload", exc.reason) from None
        raise
    except (ValueError, OSError, MemoryError) as exc:  # a decoder surprise on hostile input is still bad input
        raise ImageError("upload", f"could not decode the image: {type(exc).__name__}") from None
    from cxrkit.deploy.quality_features import add_colourfulness

    return image, add_colourfulness(meta, data)


def png_b64(image: np.ndarray) -> str:
    """A grey, RGB or RGBA uint8 image as a ``data:image/png;base64,...`` URL."""
    import cv2

    codes = {3: cv2.COLOR_RGB2BGR, 4: cv2.COLOR_RGBA2BGRA}
    arr = image if image.ndim == 2 else cv2.cvtColor(image, codes[image.shape[2]])
    ok, buf = cv2.imencode(".png", arr)
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return "data:image/png;base64," + base64.b64encode(buf.tobytes()).decode()


def heat_rgba(heatmap: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A [0, 1] heatmap -> H x W x 4 uint8 overlay: jet colours, alpha = heat (smooth maps compress to a few KB)."""
    import cv2

    heat = np.clip(np.nan_to_num(np.asarray(heatmap, np.float32)), 0.0, 1.0)
    if heat.shape != tuple(shape[:2]):
        heat = cv2.resize(heat, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
    heat_u8 = (heat * 255.0 + 0.5).astype(np.uint8)
    rgb = cv2.cvtColor(cv2.applyColorMap(heat_u8, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    return np.dstack([rgb, heat_u8])


class ModelService:
    """A predictor plus its quality gate, as the service uses them. ``run_batch`` and ``heatmaps`` run on the model
    thread only (one at a time: the model and the Grad-CAM hooks are not shared between threads)."""

    def __init__(self, predictor, *, decode_limits: DecodeLimits | None = None, metrics=None):
        from cxrkit.deploy.quality import QualityGate

        self.predictor, self.metrics = predictor, metrics
        self.decode_limits = decode_limits or DecodeLimits(max_pixels=50_000_000)
        self.gate = QualityGate.from_bundle(predictor) if getattr(predictor, "path", None) else None
        self.label_names: tuple[str, ...] = tuple(predictor.label_names)
        self.thresholds = np.asarray(predictor.thresholds, dtype=np.float32)
        self.id = model_id(predictor)
        self.version = model_version(predictor.config)
        self.can_explain = hasattr(predictor, "model") or hasattr(predictor, "members")

    # -- model thread ---------------------------------------------------------------------------
    def run_batch(self, items: Sequence[tuple[np.ndarray, dict]]) -> list[dict[str, Any]]:
        """Probabilities, abnormality and quality verdict for a batch of (image, meta) pairs."""
        from cxrkit.deploy.quality import rule_reason

        start = time.perf_counter()
        images = [im for im, _ in items]
        metas = [m for _, m in items]
        out = self.predictor.predict_full(images, batch_size=max(1, len(images)))
        if self.gate is not None:
            emb = out.get("embedding") if self.gate.method.endswith("backbone") else None
            verdicts = self.gate.check_batch(images, metas, emb)
        else:
            verdicts = []
            for im, meta in zip(images, metas):
                why = rule_reason(im, meta)
                verdicts.append({"ok": why is None, "score": None, "reason": why or "basic checks passed; the "
                                 "bundle has no fitted quality gate (cxr gate fit)"})
        if self.metrics is not None:
            self.metrics.inference.observe(time.perf_counter() - start)
        return [{"probs": out["probs"][j], "abnormality": float(out["abnormality"][j]), "quality": verdicts[j]}
                for j in range(len(images))]

    def heatmaps(self, image: np.ndarray, names: Sequence[str]) -> dict[str, Any]:
        """The decoded image at display size (grey PNG) and, per finding, a transparent RGBA PNG with the same
        aspect ratio (long side OVERLAY_MAX_SIDE) to scale over it: the heatmap in the jet colour map, opacity
        rising with the heat (cold areas see-through)."""
        from cxrkit.explain import explain_images
        from cxrkit.explain.cam import concrete_method
        from cxrkit.explain.overlay import fit_display

        start = time.perf_counter()
        maps = explain_images(self.predictor, [image], list(names))[0]
        display, _ = fit_display(image, HEATMAP_MAX_SIDE)
        small, _ = fit_display(display, OVERLAY_MAX_SIDE)
        out = {"method": concrete_method(self.predictor), "image": png_b64(display),
               "overlays": {n: png_b64(heat_rgba(maps[n], small.shape)) for n in names}}
        if self.metrics is not None:
            self.metrics.heatmap.observe(time.perf_counter() - start)
        return out

    def warm_up(self) -> None:
        """One inference on a synthetic film so the first real request does not pay for lazy initialisation."""
        yy, xx = np.mgrid[0:256, 0:256]
        film = (128 + 60 * np.sin(xx / 17.0) * np.cos(yy / 23.0)).astype(np.uint8)
        self.run_batch([(film, {"source_format": "png"})])

    # -- request helpers ------------------------------------------------------------------------
    def select(self, findings: str | None) -> list[str]:
        """Finding names from a comma-separated query value (all when empty); unknown names are a RequestError."""
        if not findings or not findings.strip():
            return list(self.label_names)
        names = [f.strip() for f in findings.split(",") if f.strip()]
        unknown = [n for n in names if n not in self.label_names]
        if unknown:
            raise RequestError(f"unknown finding(s) {unknown} in 'findings'; this model knows: "
                               f"{', '.join(self.label_names)}")
        return list(dict.fromkeys(names))

    def findings_table(self, probs: np.ndarray, names: Sequence[str]) -> list[dict[str, Any]]:
        """``[{name, probability, threshold, positive}]`` for ``names``, most probable first."""
        rows = []
        for n in names:
            i = self.label_names.index(n)
            p, t = float(probs[i]), float(self.thresholds[i])
            rows.append({"name": n, "probability": p, "threshold": t, "positive": bool(p >= t)})
        return sorted(rows, key=lambda r: -r["probability"])

    def describe(self) -> dict[str, Any]:
        """What ``GET /v1/model`` returns."""
        cfg = self.predictor.config
        prov = cfg.get("provenance") or {}
        model = cfg.get("model") or {}
        return {
            "model_id": self.id,
            "model_version": self.version,
            "label_names": list(self.label_names),
            "thresholds": {n: float(t) for n, t in zip(self.label_names, self.thresholds)},
            "threshold_policy": cfg.get("threshold_policy"),
            "input": {k: cfg["input"].get(k) for k in ("size", "preresize", "channels", "resize")},
            "architecture": model.get("arch") if model else ("ensemble" if cfg.get("ensemble") else None),
            "calibration": (cfg.get("calibration") or {}).get("method"),
            "quality_gate": (cfg.get("quality_gate") or {}).get("method"),
            "heatmaps": self.can_explain,
            "runtime": self.predictor.runtime(),
            "provenance": {k: prov.get(k) for k in ("cxrkit_version", "created", "git_commit", "data_source",
                                                    "data_manifest_hash", "seed") if k in prov},
            "metrics": {k: v for k, v in (cfg.get("metrics") or {}).items() if not isinstance(v, (dict, list))},
            "service_version": __version__,
            "notice": RESEARCH_NOTICE,
            **self.synthetic_fields(),
        }

    def synthetic_fields(self) -> dict[str, Any]:
        """``synthetic_training_data`` and its ``warning`` (None for a real-data model), in every JSON answer."""
        from cxrkit.bundle.synthetic import SYNTHETIC_WARNING, trained_on_synthetic

        synthetic = trained_on_synthetic(self.predictor.config)
        return {"synthetic_training_data": synthetic, "warning": SYNTHETIC_WARNING if synthetic else None}


def model_version(config: dict) -> str:
    """A human-readable model version: the bundle's own ``version`` if set, else its creation time."""
    prov = config.get("provenance") or {}
    return str(config.get("version") or prov.get("created") or "unversioned")
