"""Measurements for the deploy stage: the quality gate's in- vs out-of-distribution AUROC (``cxr gate eval``) and
inference speed across backends (``cxr bench infer``)."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from cxrkit.data.errors import CxrError

SKIMAGE_OOD = ("camera", "astronaut", "coins", "text", "page", "moon", "brick", "grass", "gravel", "rocket",
               "coffee", "chelsea", "horse", "clock", "cell", "hubble_deep_field", "immunohistochemistry", "retina",
               "cat", "checkerboard", "logo", "shepp_logan_phantom", "binary_blobs", "microaneurysms")


def nih_split(shared_data: str | Path, n_fit: int = 200, seed: int = 0) -> tuple[list[Path], list[Path]]:
    """Disjoint (fit, held-out) lists of the reference NIH sample films (one image per patient, so no leakage)."""
    files = sorted(Path(shared_data, "nih-sample", "images").glob("*.png"))
    if len(files) <= n_fit:
        raise CxrError(f"{shared_data}/nih-sample/images has {len(files)} films; need more than n_fit={n_fit}")
    order = np.random.default_rng(seed).permutation(len(files))
    return [files[i] for i in sorted(order[:n_fit])], [files[i] for i in sorted(order[n_fit:])]


def _u8(x: np.ndarray) -> np.ndarray:
    import cv2

    if x.dtype == bool:
        x = x.astype(np.uint8) * 255
    elif x.dtype != np.uint8:
        x = np.clip(255 * (x - x.min()) / (np.ptp(x) + 1e-9), 0, 255).astype(np.uint8)
    if x.ndim == 3:
        x = cv2.cvtColor(x[:, :, :3], cv2.COLOR_RGB2GRAY)
    return np.ascontiguousarray(x)


def _document(rng: np.random.Generator, size: int = 512) -> np.ndarray:
    import cv2

    img = np.full((size, int(size * 0.75)), int(rng.integers(200, 256)), np.uint8)
    words = ["Patient", "report", "chest", "findings", "normal", "lorem", "ipsum", "dolor", "sit", "amet", "2024"]
    for row in range(30, size - 20, int(rng.integers(18, 30))):
        line = " ".join(rng.choice(words, size=int(rng.integers(3, 8))))
        cv2.putText(img, line, (15, row), cv2.FONT_HERSHEY_SIMPLEX, 0.5, int(rng.integers(0, 60)), 1, cv2.LINE_AA)
    return img


def ood_eval_set(shared_data: str | Path, held_out: list[Path], seed: int = 0) -> tuple[list, list]:
    """(in-distribution, out-of-distribution) lists of ``(name, category, image, meta)`` for the gate AUROC.

    In: held-out NIH films, the full-resolution copies of held-out films only, the real DICOM CR. Out: the real
    abdominal DICOM, the CR's MONOCHROME1 twin (its correct decoding is an inverted film), scikit-image's sample
    images, synthetic blank/noise/gradient/document images, and held-out films inverted, rotated 90 degrees or
    reduced to one half stretched to full width (a crude lateral-view proxy: one lung field, no bilateral symmetry).
    """
    import cv2
    import skimage.data

    from cxrkit.data.decode import read_image_with_meta

    rng = np.random.default_rng(seed)
    shared_data = Path(shared_data)
    held_ids = {p.name for p in held_out}
    inside = [(p.name, "nih", *read_image_with_meta(p)) for p in held_out]
    inside += [(p.name, "nih-fullres", *read_image_with_meta(p))
               for p in sorted((shared_data / "nih-fullres").glob("*.png")) if p.name in held_ids]
    dicom = shared_data / "dicom"
    inside.append(("cr_monochrome2_jpeg_baseline.dcm", "dicom-cr",
                   *read_image_with_meta(dicom / "cr_monochrome2_jpeg_baseline.dcm")))
    # The MONOCHROME1 twin stores MONOCHROME2 pixels, so correctly decoded it *is* an inverted film.
    outside = [("not_chest_abdomen_ot.dcm", "abdomen-dicom", *read_image_with_meta(dicom / "not_chest_abdomen_ot.dcm")),
               ("cr_monochrome1_same_pixels.dcm", "inverted-dicom",
                *read_image_with_meta(dicom / "cr_monochrome1_same_pixels.dcm"))]
    for name in SKIMAGE_OOD:
        try:
            outside.append((name, "skimage", _u8(getattr(skimage.data, name)()), {}))
        except Exception:  # data files that need a download are skipped: this machine is offline
            continue
    for i in range(5):
        outside.append((f"blank{i}", "blank", np.full((256, 256), int(rng.integers(0, 256)), np.uint8), {}))
        outside.append((f"noise{i}", "noise", rng.integers(0, 256, (256, 256), dtype=np.uint8), {}))
        ramp = np.linspace(0, 255, 256, dtype=np.float32)
        grad = np.add.outer(ramp * rng.uniform(0, 1), ramp * rng.uniform(0, 1))
        outside.append((f"gradient{i}", "gradient", _u8(grad), {}))
        outside.append((f"document{i}", "document", _document(rng), {}))
    films = [im for _, cat, im, _ in inside if cat == "nih"]
    pick = rng.choice(len(films), size=min(30, len(films)), replace=False)
    for j in pick:
        im = films[j]
        outside.append((f"inverted{j}", "inverted", 255 - im, {}))
        outside.append((f"rotated{j}", "rotated90", np.ascontiguousarray(np.rot90(im, int(rng.choice([1, 3])))), {}))
        half = im[:, : im.shape[1] // 2] if rng.random() < 0.5 else im[:, im.shape[1] // 2:]
        outside.append((f"lateral{j}", "lateral-proxy", cv2.resize(half, im.shape[::-1]), {}))
    return inside, outside


def evaluate_gate(gate, inside: list, outside: list) -> dict[str, Any]:
    """AUROC of the density score alone and of the full gate (explicit checks + score), and flag rates."""
    from sklearn.metrics import roc_auc_score

    items = inside + outside
    y = np.r_[np.ones(len(inside)), np.zeros(len(outside))]
    verdicts = gate.check_batch([it[2] for it in items], [it[3] for it in items])
    density = np.array([v["score"] for v in verdicts])
    full = np.where([v["ok"] or v["score"] < 0 for v in verdicts], density, -1e9)  # explicit refusals rank last
    ok = np.array([v["ok"] for v in verdicts])
    cats: dict[str, list[bool]] = {}
    for it, v in zip(items, verdicts):
        cats.setdefault(it[1], []).append(bool(v["ok"]))
    return {"auroc_density": float(roc_auc_score(y, density)), "auroc_gate": float(roc_auc_score(y, full)),
            "n_in": len(inside), "n_out": len(outside), "in_pass_rate": float(ok[y == 1].mean()),
            "out_flag_rate": float(1 - ok[y == 0].mean()),
            "pass_rate_by_category": {k: float(np.mean(v)) for k, v in sorted(cats.items())}}


# -- inference speed ----------------------------------------------------------------------------
def make_bench_bundle(out: str | Path, arch: str = "densenet121", size: int = 224, seed: int = 0) -> Path:
    """A random-init bundle of ``arch`` at ``size`` px (speed does not depend on the weights)."""
    import torch

    from cxrkit.bundle import save_bundle
    from cxrkit.data.labels import NIH_FINDINGS
    from cxrkit.models import GREY_MEAN, GREY_STD, create_model

    torch.manual_seed(seed)  # local to this benchmark process; the weights only need to be deterministic
    return save_bundle(out, create_model(arch, len(NIH_FINDINGS)), label_names=NIH_FINDINGS, input_size=size,
                       preresize=size, mean=GREY_MEAN, std=GREY_STD, provenance={"data_source": "random-init bench"})


def make_bench_pngs(out: str | Path, n: int = 64, size: int = 224, seed: int = 0) -> list[Path]:
    """``n`` film-like grey PNGs (smooth random fields) of ``size`` px."""
    import cv2

    from cxrkit.deploy.export import synthetic_parity_images

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, img in enumerate(synthetic_parity_images(size, n, seed)):
        paths.append(out / f"bench_{i:04d}.png")
        cv2.imwrite(str(paths[-1]), img)
    return paths


def latency(predictor, paths: list[Path], repeats: int = 1, warmup: int = 3) -> dict[str, float]:
    """Single-image latency through the whole predictor: read + decode + fit_square + model + calibration."""
    from cxrkit.data.decode import read_image

    for p in paths[:warmup]:
        predictor.predict([read_image(p)])
    times = []
    for _ in range(repeats):
        for p in paths:
            t = time.perf_counter()
            predictor.predict([read_image(p)])
            times.append(time.perf_counter() - t)
    ms = 1000 * np.asarray(times)
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)), "n": len(ms)}


def throughput(predictor, paths: list[Path], batch_size: int = 32, workers: int | None = None) -> float:
    """img/s of :func:`predict_files` (decode pool + batched model + quality checks)."""
    from cxrkit.deploy.predict import predict_files

    predict_files(predictor, paths[:batch_size], batch_size=batch_size, workers=workers)
    t = time.perf_counter()
    predict_files(predictor, paths, batch_size=batch_size, workers=workers)
    return len(paths) / (time.perf_counter() - t)


def mean_auroc(predictor, cache, rows: np.ndarray, batch_size: int = 64) -> float:
    """Mean over findings (with both classes present) of the AUROC on cache ``rows``."""
    import torch
    from sklearn.metrics import roc_auc_score

    probs = np.concatenate([predictor.forward_uint8(torch.from_numpy(np.asarray(cache.images[rows[i:i + batch_size]]))
                                                    .unsqueeze(1))["probs"] for i in range(0, len(rows), batch_size)])
    labels = cache.labels(rows)
    aucs = [roc_auc_score(labels[:, c][m], probs[:, c][m]) for c in range(labels.shape[1])
            if len(np.unique(labels[:, c][m := ~np.isnan(labels[:, c])])) == 2]
    return float(np.mean(aucs)) if aucs else float("nan")


def gpu_throughput(bundle: str | Path, batch_size: int = 256, iters: int = 50, precision: str = "bf16",
                   compile: bool = True, n_batches: int = 4) -> dict[str, Any]:
    """img/s of the torch predictor's uint8 fast path on CUDA, preprocessing on the GPU and probabilities back on
    the host included, timed twice: with the uint8 batches already on the GPU, and with them in pinned host memory
    (the host-to-device copy included, as when batches come from the cache loader). ``n_batches`` different random
    batches rotate so no run reads the same input twice in a row."""
    import torch

    from cxrkit.deploy.onnx_runtime import load_predictor

    pred = load_predictor(bundle, "torch", device="cuda", precision=precision, compile=compile, channels_last=True)
    shape = (batch_size, 1, pred.preresize, pred.preresize)
    gen = torch.Generator().manual_seed(0)
    host = [torch.randint(0, 256, shape, dtype=torch.uint8, generator=gen).pin_memory() for _ in range(n_batches)]
    on_gpu = [b.to("cuda") for b in host]
    result: dict[str, Any] = {"batch": batch_size, "iters": iters, "precision": precision, "compile": compile,
                              "gpu": torch.cuda.get_device_name(), "torch": torch.__version__}
    t = time.perf_counter()
    for i in range(5):  # compile + autotune
        pred.forward_uint8(on_gpu[i % n_batches])
    torch.cuda.synchronize()
    result["warmup_s"] = time.perf_counter() - t
    for name, batches in (("device_resident", on_gpu), ("from_pinned_host", host)):
        times = []
        for _ in range(3):  # three timed rounds; the median is reported
            torch.cuda.synchronize()
            t = time.perf_counter()
            for i in range(iters):
                pred.forward_uint8(batches[i % n_batches])
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
        result[name] = {"img_per_s": batch_size * iters / float(np.median(times)),
                        "rounds_img_per_s": [batch_size * iters / x for x in times]}
    result["img_per_s"] = result["from_pinned_host"]["img_per_s"]
    return result


def default_cpu_backends() -> list[str]:
    """What ``cxr bench infer --device cpu`` times by default: OpenVINO's rows only where it is installed."""
    import importlib.util

    names = ["torch-fp32", "onnx-fp32", "onnx-int8"]
    if importlib.util.find_spec("openvino") is not None:
        names += ["openvino-fp32", "openvino-int8", "openvino-bf16"]
    return names


def cpu_report(bundle: str | Path, images: str | Path | None, workdir: str | Path, *, n: int = 64, size: int = 224,
               threads: int | None = None, backends=None, cache: str | Path | None = None) -> dict[str, Any]:
    """CPU latency (p50/p99, one image through the whole predictor) and img/s per backend (default:
    :func:`default_cpu_backends`); with a cache, also each ONNX/OpenVINO backend's mean AUROC on its test split
    (INT8 calibrated on its train split). ``threads`` applies to torch for the call only."""
    import torch

    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _cpu_report(bundle, images, Path(workdir), n, size, threads, list(backends or default_cpu_backends()),
                           cache)
    finally:
        torch.set_num_threads(previous)


def _cpu_report(bundle, images, workdir: Path, n: int, size: int, threads: int | None, backends: list[str],
                cache) -> dict[str, Any]:
    import torch

    from cxrkit.data.decode import read_image
    from cxrkit.deploy.export import cache_images, export_onnx, quantize_int8
    from cxrkit.deploy.onnx_runtime import load_predictor
    from cxrkit.deploy.predict import expand_inputs

    paths = expand_inputs([images]) if images else make_bench_pngs(workdir / f"pngs_{size}", n, size)
    paths = paths[:n]
    fp32_path, int8_path = workdir / "model.onnx", workdir / "model.int8.onnx"
    report: dict[str, Any] = {"bundle": str(bundle), "n_images": len(paths), "threads": torch.get_num_threads(),
                              "image_size": list(read_image(paths[0]).shape), "backends": {}}
    if any(not b.startswith("torch") for b in backends) or cache:  # onnx and openvino run the exported file
        report["export"] = export_onnx(bundle, fp32_path)
    calib_source = "cache train split" if cache else "the benchmark images"
    if any(b.endswith("-int8") for b in backends) or cache:
        calib = cache_images(cache, 128, split="train") if cache else np.stack(
            [read_image(p) for p in paths[:64]]) if len({read_image(p).shape for p in paths[:64]}) == 1 else None
        if calib is None:
            raise CxrError("INT8 calibration from --images needs equal-size images; pass --cache CACHE")
        quantize_int8(fp32_path, int8_path, calib)
        report["int8_calibration"] = f"{len(calib)} images from {calib_source}"
    def load(name: str):
        kind, precision = name.split("-", 1)
        if kind == "torch":
            return load_predictor(bundle, "torch", precision=precision)
        return load_predictor(bundle, kind, precision=precision, onnx_file=int8_path if precision == "int8" else
                              fp32_path, threads=threads or torch.get_num_threads())

    for name in backends:
        pred = load(name)
        report["backends"][name] = {**latency(pred, paths), "img_per_s": throughput(pred, paths)}
    b = report["backends"]
    if "onnx-fp32" in b:  # every speed-up is over ONNX Runtime fp32, the baseline
        report["speedup_p50_vs_onnx_fp32"] = {k: b["onnx-fp32"]["p50_ms"] / v["p50_ms"] for k, v in b.items()}
        if "onnx-int8" in b:
            report["int8_speedup_p50"] = report["speedup_p50_vs_onnx_fp32"]["onnx-int8"]
    if cache:
        from cxrkit.data.cache import open_cache

        c = open_cache(cache)
        rows = c.rows("test")
        scored = ["onnx-fp32", "onnx-int8"] + [k for k in backends if k.startswith("openvino-")]
        aucs = {k: mean_auroc(load(k), c, rows) for k in dict.fromkeys(scored)}
        report["auroc"] = {"test_images": int(len(rows)), **{k.replace("-", "_"): v for k, v in aucs.items()},
                           "change": aucs["onnx-int8"] - aucs["onnx-fp32"],
                           "change_vs_onnx_fp32": {k: v - aucs["onnx-fp32"] for k, v in aucs.items()}}
    return report
