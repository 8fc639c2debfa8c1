"""What the service does with one upload, independent of HTTP: decode safely, run the model (batched) with the
quality gate, draw heatmaps, describe the model."""
from __future__ import annotations

import base64
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from cxrkit import RESEARCH_NOTICE, __version__
from cxrkit.bundle.identity import model_id, model_version  # noqa: F401 - re-exported for the service
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


def quiet_decoder_logs() -> None:
    """For the server process: hostile uploads make pydicom log ERROR lines with tracebacks and warn, but each
    refusal already gets one log line of its own (status and request id, :class:`~.metrics.RequestObserver`)
    and a 4xx answer with the reason. Silences pydicom's logger and warnings (libpng's are avoided by the decoder,
    which drops ancillary PNG chunks before decoding)."""
    import logging
    import warnings

    import pydicom  # noqa: F401 - importing pydicom sets its logger's level, so import it before overriding that

    logging.getLogger("pydicom").setLevel(logging.CRITICAL + 1)
    warnings.filterwarnings("ignore", module="pydicom")


def decode_upload(data: bytes, limits: DecodeLimits, max_side: int | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Upload bytes -> (uint8 grey image, metadata). Raises ImageError (UnsupportedImage for other formats).

    ``max_side``: an image with a longer side is shrunk to it (area interpolation, aspect kept) right after
    decoding, so what waits for the model is small whatever the upload decodes to; ``meta["orig_width"]``,
    ``meta["orig_height"]`` keep the decoded size. The model sees ``fit_square`` of the shrunk image, which for
    ``max_side`` at or above its input size differs from ``fit_square`` of the original by resampling rounding only.
    """
    try:
        image, meta = decode_bytes_with_meta(data, name="upload", limits=limits)
    except ImageError as exc:
        if data and sniff_format(data) is None:
            raise UnsupportedImage("upload", exc.reason) from None
        raise
    except (ValueError, OSError, MemoryError) as exc:  # a decoder surprise on hostile input is still bad input
        raise ImageError("upload", f"could not decode the image: {type(exc).__name__}") from None
    from cxrkit.deploy.quality_features import add_colourfulness

    meta = add_colourfulness(meta, data)
    h, w = image.shape
    meta["orig_width"], meta["orig_height"] = w, h
    if max_side is not None and max(h, w) > max_side:
        import cv2

        scale = max_side / max(h, w)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        image = np.ascontiguousarray(cv2.resize(image, size, interpolation=cv2.INTER_AREA))
    return image, meta


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
    """A predictor plus its quality gate, as the service uses them. ``run_batch`` runs on the model thread only;
    ``heatmaps`` on the heatmap thread only, with its own copy of the predictor (Grad-CAM hooks a model, so the two
    threads never share one)."""

    def __init__(self, predictor, *, decode_limits: DecodeLimits | None = None, metrics=None,
                 decode_max_side: int | None = None):
        from cxrkit.deploy.quality import QualityGate

        self.predictor, self.metrics = predictor, metrics
        self.decode_limits = decode_limits or DecodeLimits(max_pixels=50_000_000)
        self.decode_max_side = decode_max_side
        self._explainer = None  # the heatmap thread's own copy of the predictor, made on first use
        self.gate = QualityGate.from_bundle(predictor) if getattr(predictor, "path", None) else None
        self.label_names: tuple[str, ...] = tuple(predictor.label_names)
        self.thresholds = np.asarray(predictor.thresholds, dtype=np.float32)
        self.id = model_id(predictor)
        self.version = model_version(predictor.config)
        from cxrkit.deploy.runtime import runtime_metadata

        self.runtime_choice = getattr(predictor, "runtime_choice", None)
        self.runtime = runtime_metadata(predictor)  # what every predict response says ran the model
        # An exported-graph runtime explains with the bundle's torch weights (loaded on the heatmap thread on
        # first use), so the fast default backend keeps the web page's heatmaps.
        path = getattr(predictor, "path", None)
        self._torch_bundle = path if path is not None and (Path(path) / "model.safetensors").is_file() else None
        self.can_explain = hasattr(predictor, "model") or hasattr(predictor, "members") or \
            self._torch_bundle is not None

    # -- model thread ---------------------------------------------------------------------------
    def run_batch(self, items: Sequence[tuple[np.ndarray, dict]]) -> list[dict[str, Any]]:
        """Probabilities, abnormality and quality verdict for a batch of (image, meta) pairs."""
        from cxrkit.deploy.quality import quality_verdicts

        start = time.perf_counter()
        images = [im for im, _ in items]
        metas = [m for _, m in items]
        out = self.predictor.predict_full(images, batch_size=max(1, len(images)))
        verdicts = quality_verdicts(self.gate, images, metas, out)
        if self.metrics is not None:
            self.metrics.inference.observe(time.perf_counter() - start)
        return [{"probs": out["probs"][j], "abnormality": float(out["abnormality"][j]), "quality": verdicts[j]}
                for j in range(len(images))]

    def heatmaps(self, image: np.ndarray, names: Sequence[str]) -> dict[str, Any]:
        """The decoded image at display size (grey PNG) and, per finding, a transparent RGBA PNG with the same
        aspect ratio (long side OVERLAY_MAX_SIDE) to scale over it: the heatmap in the jet colour map, opacity
        rising with the heat (cold areas see-through); and per finding the boxes of its map
        (:func:`cxrkit.explain.boxes_for`, ``[x, y, w, h, score]`` in ``image``'s pixels)."""
        from cxrkit.explain import explain_images
        from cxrkit.explain.cam import concrete_method
        from cxrkit.explain.finding_boxes import boxes_for
        from cxrkit.explain.overlay import fit_display

        start = time.perf_counter()
        if self._explainer is None:
            import copy

            if hasattr(self.predictor, "model") or hasattr(self.predictor, "members"):
                self._explainer = copy.deepcopy(self.predictor)
            else:
                from cxrkit.deploy.onnx_runtime import load_predictor

                self._explainer = load_predictor(self._torch_bundle, backend="torch")
        # At model resolution: maps come back at the size of the image explained, so explain one no larger than
        # the model's input (or the display size); explaining the original drew maps of its full size.
        side = max(HEATMAP_MAX_SIDE, int(getattr(self.predictor, "preresize", 0) or 0))
        work, _ = fit_display(image, side)
        maps = explain_images(self._explainer, [work], list(names))[0]
        display, _ = fit_display(work, HEATMAP_MAX_SIDE)
        small, _ = fit_display(display, OVERLAY_MAX_SIDE)
        method = concrete_method(self._explainer)
        f = image.shape[1] / work.shape[1]  # boxes in the pixels of the image given, like the maps they come from
        boxes = {n: [[round(v * f, 1) for v in b[:4]] + [b[4]] for b in boxes_for(self.predictor, n, maps[n], method)]
                 for n in names}
        out = {"method": method, "image": png_b64(display),
               "overlays": {n: png_b64(heat_rgba(maps[n], small.shape)) for n in names}, "boxes": boxes}
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
            "runtime_choice": self.runtime_choice,
            "provenance": {k: prov.get(k) for k in ("cxrkit_version", "created", "git_commit", "data_source",
                                                    "data_manifest_hash", "seed") if k in prov},
            "metrics": {k: v for k, v in (cfg.get("metrics") or {}).items() if not isinstance(v, (dict, list))},
            "service_version": __version__,
            "notice": RESEARCH_NOTICE,
            **self.synthetic_fields(),
        }

    def synthetic_fields(self) -> dict[str, Any]:
        """``synthetic_training_data`` and its ``warning`` (None for a real-data model), in every JSON answer."""
        from cxrkit.bundle.synthetic import (SYNTHETIC_INIT_NOTE, SYNTHETIC_WARNING, initialised_from_synthetic,
                                             trained_on_synthetic)

        synthetic = trained_on_synthetic(self.predictor.config)
        init = initialised_from_synthetic(self.predictor.config)
        return {"synthetic_training_data": synthetic, "warning": SYNTHETIC_WARNING if synthetic else None,
                "synthetic_initialisation": init, **({"note": SYNTHETIC_INIT_NOTE} if init and not synthetic else {})}

