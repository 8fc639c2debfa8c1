"""`cxr bench infer --device cpu`: every measurement repeated in alternating fresh processes.

On a shared or small machine one process's timing is not another's: the same ONNX Runtime session measured
35-59 ms per film in five fresh processes. So each backend is measured ``rounds`` times, each time in a new
process, the backends interleaved (round r starts at backend r), and the report gives the median and the min-max
of each figure, plus per-round ratios (a ratio of two processes of the same round shares that round's noise).

Per backend and round (:func:`measure`): single-film latency through the whole predictor (read + decode + model),
the model-alone batch ceiling (the network on already decoded, already fitted films), folder throughput of
``cxr predict``'s pipeline on a folder of full-size films (decoding overlapped with the network), with boxes (the
default) and without, the CPU time per film of the ceiling and of each folder run, the peak RSS of the process and
the 1-minute load average when it ends. Run as ``python -m cxrkit.deploy.bench_cpu`` by :func:`repeated_report`.
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

METRICS = ("p50_ms", "p99_ms", "ceiling_img_per_s", "folder_img_per_s", "folder_vs_ceiling",
           "folder_no_boxes_img_per_s", "folder_no_boxes_vs_ceiling", "ceiling_cpu_ms", "folder_cpu_ms",
           "folder_no_boxes_cpu_ms", "rss_peak_mb", "load_s", "load_1m")


def _rss_peak_mb() -> float:
    """Peak RSS of this process: VmHWM (ru_maxrss survives exec, so a child would report its parent's peak)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def batch_ceiling(pred, squares: np.ndarray, batch_size: int) -> tuple[float, float]:
    """Images per second of the network alone on already fitted squares (n x P x P uint8), and the process's CPU
    ms per image over the same timed batches, after one warm-up batch (which compiles OpenVINO's buckets: its CPU
    time is not the network's). Give it a multiple of ``batch_size`` films: a short last batch is padded to the
    next bucket and lowers the figure."""
    pred.forward_uint8(pred.to_uint8_batch(squares[:batch_size]))
    t, cpu = time.perf_counter(), time.process_time()
    for i in range(0, len(squares), batch_size):
        pred.forward_uint8(pred.to_uint8_batch(squares[i:i + batch_size]))
    return len(squares) / (time.perf_counter() - t), 1000 * (time.process_time() - cpu) / len(squares)


def measure(bundle: str, backend: str, fp32: str, int8: str, images: list[str], folder: list[str],
            threads: int | None, batch_size: int) -> dict[str, Any]:
    """One backend, in this (fresh) process."""
    import torch

    from cxrkit.deploy.bench import latency
    from cxrkit.deploy.onnx_runtime import load_predictor
    from cxrkit.deploy.predict import _safe_decode, predict_files

    if threads:
        torch.set_num_threads(threads)
    kind, precision = backend.split("-", 1)
    t = time.perf_counter()
    if kind == "torch":
        pred = load_predictor(bundle, "torch", precision=precision)
    else:
        pred = load_predictor(bundle, kind, precision=precision, onnx_file=int8 if precision == "int8" else fp32,
                              threads=threads)
    out: dict[str, Any] = {"load_s": time.perf_counter() - t}
    out.update(latency(pred, [Path(p) for p in images]))
    if folder:
        from cxrkit.data.transforms import fit_square

        films = [d[0] for d in map(_safe_decode, folder) if not isinstance(d, Exception)]
        squares = np.stack([fit_square(f, pred.preresize)[0] for f in films])
        del films
        # CPU time of every thread of the process per film: on a shared machine, a figure that the other
        # processes' share of the cores does not change (wall-clock rates do)
        out["ceiling_img_per_s"], out["ceiling_cpu_ms"] = batch_ceiling(pred, squares, batch_size)
        predict_files(pred, folder[:batch_size], batch_size=batch_size)  # warm-up of the pipeline
        for boxes, key in ((True, "folder"), (False, "folder_no_boxes")):
            t, cpu = time.perf_counter(), time.process_time()
            rows = predict_files(pred, folder, batch_size=batch_size, boxes=boxes)
            out[f"{key}_img_per_s"] = len(folder) / (time.perf_counter() - t)
            out[f"{key}_cpu_ms"] = 1000 * (time.process_time() - cpu) / len(folder)
            out[f"{key}_vs_ceiling"] = out[f"{key}_img_per_s"] / out["ceiling_img_per_s"]
        out["folder_errors"] = sum(r["status"] != "ok" for r in rows)
    out["rss_peak_mb"] = _rss_peak_mb()
    out["load_1m"] = os.getloadavg()[0]
    out["runtime"] = pred.runtime()
    return out


def _summary(values: list[float]) -> dict[str, float]:
    arr = np.asarray(values, dtype=np.float64)
    return {"median": float(np.median(arr)), "min": float(arr.min()), "max": float(arr.max())}


def interleaved_order(backends: list[str], rounds: int) -> list[list[str]]:
    """Round r runs the backends starting at backend r: no backend always runs first (or last) in a round."""
    k = len(backends)
    return [[backends[(r + i) % k] for i in range(k)] for r in range(rounds)]


def repeated_report(bundle: str | Path, workdir: str | Path, *, images: str | Path | None = None,
                    folder: str | Path | None = None, rounds: int = 5, n: int = 32, size: int = 224,
                    folder_n: int = 64, threads: int | None = None, backends: list[str] | None = None,
                    batch_size: int = 16, progress=print) -> dict[str, Any]:
    """Prepare the exports once, then ``rounds`` x backends fresh measurement processes, interleaved."""
    from cxrkit.data.decode import read_image
    from cxrkit.deploy.bench import default_cpu_backends, make_bench_pngs
    from cxrkit.deploy.export import export_onnx, quantize_int8
    from cxrkit.deploy.predict import expand_inputs

    workdir = Path(workdir)
    backends = list(backends or default_cpu_backends())
    paths = (expand_inputs([images]) if images else make_bench_pngs(workdir / f"pngs_{size}", n, size))[:n]
    films = (expand_inputs([folder]) if folder else make_bench_pngs(workdir / "films_1024", folder_n, 1024))
    films = films[:folder_n]
    fp32, int8 = workdir / "model.onnx", workdir / "model.int8.onnx"
    report: dict[str, Any] = {"bundle": str(bundle), "rounds": rounds, "threads": threads or os.cpu_count(),
                              "n_latency_images": len(paths), "latency_image_size": list(read_image(paths[0]).shape),
                              "folder": str(folder or workdir / "films_1024"), "n_folder_films": len(films),
                              "batch_size": batch_size, "load_before": os.getloadavg()}
    if any(not b.startswith("torch") for b in backends):
        report["export"] = export_onnx(bundle, fp32)
        if any(b.endswith("-int8") for b in backends):
            calib = [read_image(p) for p in paths[:64]]
            if len({c.shape for c in calib}) != 1:
                from cxrkit.data.errors import CxrError

                raise CxrError("INT8 calibration from --images needs equal-size images")
            quantize_int8(fp32, int8, np.stack(calib))
    runs: dict[str, list[dict]] = {b: [] for b in backends}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[2]),
                                                                     os.environ.get("PYTHONPATH")]))}
    spec = {"bundle": str(bundle), "fp32": str(fp32), "int8": str(int8), "images": [str(p) for p in paths],
            "folder": [str(p) for p in films], "threads": threads, "batch_size": batch_size}
    spec_file = workdir / "bench_spec.json"
    spec_file.write_text(json.dumps(spec))
    for r, order in enumerate(interleaved_order(backends, rounds)):
        for b in order:
            proc = subprocess.run([sys.executable, "-m", "cxrkit.deploy.bench_cpu", b, str(spec_file)], env=env,
                                  capture_output=True, text=True, timeout=3600)
            if proc.returncode != 0:
                from cxrkit.data.errors import CxrError

                raise CxrError(f"bench process for {b} failed: {proc.stderr[-2000:]}")
            runs[b].append(json.loads(proc.stdout.strip().splitlines()[-1]))
            m = runs[b][-1]
            progress(f"round {r + 1}/{rounds} {b}: p50 {m['p50_ms']:.1f} ms, ceiling "
                     f"{m.get('ceiling_img_per_s', float('nan')):.1f} img/s, folder "
                     f"{m.get('folder_img_per_s', float('nan')):.1f} img/s ("
                     f"{m.get('folder_no_boxes_img_per_s', float('nan')):.1f} without boxes), RSS "
                     f"{m['rss_peak_mb']:.0f} MB, load {m['load_1m']:.2f}")
    report["load_after"] = os.getloadavg()
    report["backends"] = {b: {k: _summary([m[k] for m in ms]) for k in METRICS if k in ms[0]}
                          for b, ms in runs.items()}
    for b, ms in runs.items():
        report["backends"][b]["runtime"] = ms[0]["runtime"]
        report["backends"][b]["rounds_p50_ms"] = [round(m["p50_ms"], 2) for m in ms]
        # every round's figures as measured: a round whose load changed shows up here, not only in the spread
        report["backends"][b]["per_round"] = [{k: round(m[k], 3) for k in METRICS if k in m} for m in ms]
    base = "onnx-fp32" if "onnx-fp32" in runs else backends[0]
    report["speedup_p50_vs"] = base
    report["speedup_p50"] = {b: _summary([runs[base][r]["p50_ms"] / runs[b][r]["p50_ms"] for r in range(rounds)])
                             for b in backends}
    return report


def markdown(report: dict[str, Any]) -> str:
    """The per-backend table of docs/benchmarks.md."""
    def cell(b: str, k: str, fmt: str) -> str:
        s = report["backends"][b].get(k)
        return "n/a" if s is None else f"{s['median']:{fmt}} ({s['min']:{fmt}}-{s['max']:{fmt}})"

    lines = [f"| backend | single p50 ms | speed-up vs {report['speedup_p50_vs']} | batch ceiling img/s | folder img/s "
             "| folder / ceiling | folder / ceiling, no boxes | CPU ms/film: ceiling, folder, no boxes | peak RSS MB |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for b in report["backends"]:
        sp = report["speedup_p50"][b]
        cpu = ", ".join(f"{report['backends'][b][k]['median']:.0f}" if k in report["backends"][b] else "n/a"
                        for k in ("ceiling_cpu_ms", "folder_cpu_ms", "folder_no_boxes_cpu_ms"))
        lines.append(f"| {b} | {cell(b, 'p50_ms', '.1f')} | {sp['median']:.2f}x ({sp['min']:.2f}-{sp['max']:.2f}) | "
                     f"{cell(b, 'ceiling_img_per_s', '.1f')} | {cell(b, 'folder_img_per_s', '.1f')} | "
                     f"{cell(b, 'folder_vs_ceiling', '.2f')} | {cell(b, 'folder_no_boxes_vs_ceiling', '.2f')} | "
                     f"{cpu} | {cell(b, 'rss_peak_mb', '.0f')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    backend, spec_file = (argv or sys.argv[1:])[:2]
    spec = json.loads(Path(spec_file).read_text())
    print(json.dumps(measure(spec["bundle"], backend, spec["fp32"], spec["int8"], spec["images"], spec["folder"],
                             spec["threads"], spec["batch_size"])))


if __name__ == "__main__":
    main()
