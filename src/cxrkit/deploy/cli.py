"""`cxr predict`, `cxr export`, `cxr gate fit|eval`, `cxr bench infer` (`cxr serve` lives in deploy/serve)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import List, Optional

import typer


def warn_if_synthetic(config: dict) -> None:
    """One loud stderr line when the bundle was trained on phantom films (its outputs on real films mean nothing)."""
    from cxrkit.bundle.synthetic import (SYNTHETIC_INIT_NOTE, SYNTHETIC_WARNING, initialised_from_synthetic,
                                         trained_on_synthetic)

    if trained_on_synthetic(config):
        typer.secho(f"warning: {SYNTHETIC_WARNING}", fg=typer.colors.YELLOW, err=True)
    elif initialised_from_synthetic(config):
        typer.secho(f"note: this model was {SYNTHETIC_INIT_NOTE}", fg=typer.colors.YELLOW, err=True)


def _echo_json(obj) -> None:
    typer.echo(json.dumps(obj, indent=2))


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    gate_app = typer.Typer(help="Fit and measure the input quality / out-of-distribution gate.",
                           no_args_is_help=True)

    @app.command("predict")
    def predict_cmd(
        bundle: Path = typer.Argument(..., help="Bundle directory (or an exported .onnx with --backend onnx/openvino)"),
        inputs: List[str] = typer.Argument(..., help="Image files, folders (recursive) or glob patterns"),
        out: Path = typer.Option(..., "--out", "-o", help="Output file: results.csv or results.jsonl"),
        heatmaps: Optional[Path] = typer.Option(None, help="Write a heatmap figure per positive finding here"),
        batch_size: int = typer.Option(32, min=1, help="Images per forward pass"),
        device: str = typer.Option("cpu", help="Device: cpu or cuda (under torchrun: cuda:LOCAL_RANK)"),
        backend: str = typer.Option("auto", help="Runtime: auto (the fastest this machine and bundle have, said on "
                                    "stderr and in the results), torch, onnx or openvino (the last two run "
                                    "BUNDLE/model*.onnx, written by `cxr train` or `cxr export`)"),
        precision: str = typer.Option("auto", help="Precision: auto (INT8 only when its recorded accuracy change is "
                                      "within tolerance), torch fp32/bf16/fp16; onnx fp32/int8; openvino fp32/int8/bf16"),
        workers: Optional[int] = typer.Option(None, min=1, help="Decoding threads (they also fit films to the model "
                                              "and run the quality checks)", show_default="every core"),
        gate: bool = typer.Option(True, help="Apply the bundle's quality gate (--no-gate: header/rule checks only)"),
        boxes: bool = typer.Option(True, help="Boxes of each positive finding from its evidence map (columns boxes, "
                                   "box_method; --no-boxes: skip, one forward less per film)"),
        box_maps: str = typer.Option("bundle", "--box-maps",
                                     help="Where box maps come from: 'bundle', the map method the bundle was tuned "
                                          "to (a fast runtime's CAM output only when that is CAM); 'graph', the "
                                          "exported graph's CAM always (faster, coarser boxes)"),
    ) -> None:
        """Predict every input file: one row per input (bad files become error rows), quality flags, notice.

        Multi-GPU / multi-node: run under torchrun (rank r takes inputs r::world; rank 0 merges in input order).

        An interrupted run resumes from its part files when rerun with the same arguments.

        Exit status: 0 every input predicted, 1 some inputs failed, 3 every input failed (the results file is
        written in all three cases), 2 the command could not run.
        """
        from cxrkit.deploy.predict import BOX_MAPS, PredictError, expand_inputs, output_format, run_shard
        from cxrkit.deploy.runtime import load_fastest

        output_format(out)
        if box_maps not in BOX_MAPS:  # before the model loads, not at the first batch
            raise PredictError(f"--box-maps must be one of {', '.join(BOX_MAPS)}, got {box_maps!r}")
        if heatmaps is not None and backend not in ("torch", "auto"):
            raise PredictError("--heatmaps needs --backend torch (CAM/Grad-CAM need the torch model)")
        world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
        barrier = lambda: None  # noqa: E731
        if world > 1:
            import torch.distributed as dist

            local = int(os.environ.get("LOCAL_RANK", "0"))
            if device == "cuda":
                import torch

                device = f"cuda:{local}"
                torch.cuda.set_device(local)
            dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
            barrier = dist.barrier
        paths = expand_inputs(inputs)
        if not paths:
            raise PredictError(f"no input files found in {inputs}")
        predictor, choice = load_fastest(bundle, device=device, backend=backend, precision=precision,
                                         heatmaps=heatmaps is not None)
        if rank == 0:
            typer.echo(f"runtime: {choice.label()}", err=True)
        warn_if_synthetic(predictor.config)
        try:
            written = run_shard(predictor, paths, out, rank=rank, world=world, barrier=barrier,
                                batch_size=batch_size, workers=workers, gate="auto" if gate else None,
                                heatmaps=heatmaps, boxes=boxes, box_maps=box_maps, progress=rank == 0)
        finally:
            if world > 1:
                import torch.distributed as dist

                dist.destroy_process_group()
        if written is not None:
            from cxrkit.deploy.predict import exit_code, status_counts

            counts = status_counts(written)
            failed = f"; {counts['error']} input(s) failed (status=error, reason in the error column)" \
                if counts["error"] else ""
            typer.echo(f"wrote {len(paths)} rows to {written}{failed}")
            code = exit_code(counts)
            if code:
                raise typer.Exit(code)

    @app.command("export")
    def export_cmd(
        bundle: Path = typer.Argument(..., help="Bundle directory"),
        format: str = typer.Option("onnx", "--format", help="Export format: onnx or torchscript"),
        out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output file",
                                           show_default="BUNDLE/model.onnx (model.ts)"),
        int8: bool = typer.Option(False, "--int8", help="Also write calibrated static INT8 ONNX (*.int8.onnx)"),
        calib_cache: Optional[Path] = typer.Option(None, help="Prepared cache: INT8 calibration + parity images"),
        calib_n: int = typer.Option(128, min=8, help="Calibration images drawn from the cache's train split"),
        seed: int = typer.Option(0, help="Seed of the calibration image draw"),
    ) -> None:
        """Export with an automatic parity check (fp32: max |dp| <= 1e-4 vs the torch predictor, else exit 2)."""
        from cxrkit.deploy.export import cache_images, export

        calib = parity = None
        if calib_cache is not None:
            from cxrkit.data.cache import open_cache

            split = "train" if len(open_cache(calib_cache).rows("train")) else None
            calib = cache_images(calib_cache, calib_n, split=split, seed=seed)
            parity = calib[:32]
        _echo_json(export(bundle, format, out, int8=int8, calib_images=calib, parity_images=parity))

    @gate_app.command("fit")
    def gate_fit(
        bundle: Path = typer.Argument(..., help="Bundle directory to store the gate in"),
        images: List[str] = typer.Argument(..., help="In-distribution frontal chest films: files, folders, globs"),
        method: str = typer.Option("lr-handcrafted", help="Gate method: lr-handcrafted, maha-handcrafted, lr-backbone, "
                                   "maha-backbone"),
        target_fpr: float = typer.Option(0.02, min=0.0, max=0.5, help="Fraction of real films expected flagged"),
        seed: int = typer.Option(0, help="Seed of the gate's cross-fitting"),
    ) -> None:
        """Fit the quality gate on chest films and store it in the bundle (quality_gate.safetensors)."""
        from cxrkit.deploy.predict import _safe_decode, expand_inputs
        from cxrkit.deploy.quality import QualityGateError, fit_quality_gate

        decoded = [_safe_decode(p) for p in expand_inputs(images)]
        films = [d[0] for d in decoded if not isinstance(d, Exception)]
        if not films:
            raise QualityGateError(f"no readable images in {images}")
        gate = fit_quality_gate(bundle, films, method=method, target_fpr=target_fpr, seed=seed)
        typer.echo(f"fitted {method} gate on {len(films)} films ({len(decoded) - len(films)} unreadable skipped); "
                   f"threshold {gate.threshold:.3f}; stored in {bundle}")

    @gate_app.command("eval")
    def gate_eval(
        bundle: Path = typer.Argument(..., help="Bundle (its backbone is used by the *-backbone methods)"),
        shared_data: Path = typer.Option(Path("../shared/data"), help="The reference data folder"),
        method: List[str] = typer.Option(["lr-handcrafted"], help="One or more gate methods to compare"),
        n_fit: int = typer.Option(200, help="NIH sample films to fit on; the rest are held out"),
        target_fpr: float = typer.Option(0.02, help="Fraction of real films expected flagged"),
        seed: int = typer.Option(0, help="Seed of the fit/held-out split and the gate fit"),
        save: bool = typer.Option(False, help="Store the (first) fitted gate in the bundle"),
    ) -> None:
        """Fit on n_fit NIH films, measure AUROC of held-out real chest films vs out-of-distribution images."""
        from cxrkit.bundle import load_bundle
        from cxrkit.data.decode import read_image
        from cxrkit.deploy.bench import evaluate_gate, nih_split, ood_eval_set
        from cxrkit.deploy.quality import fit_gate

        fit, held = nih_split(shared_data, n_fit, seed)
        films = [read_image(p) for p in fit]
        inside, outside = ood_eval_set(shared_data, held, seed)
        predictor = load_bundle(bundle)
        results = {}
        for k, m in enumerate(method):
            gate, info = fit_gate(films, method=m, target_fpr=target_fpr, seed=seed, predictor=predictor)
            results[m] = evaluate_gate(gate, inside, outside)
            if save and k == 0:
                gate.save(bundle, fit_info={**info, "eval": results[m]})
        _echo_json(results)

    @groups["bench"].command("infer")
    def bench_infer(
        bundle: Optional[Path] = typer.Option(None, help="Bundle to time",
                                              show_default="a random DenseNet-121 built in --workdir"),
        images: Optional[Path] = typer.Option(None, help="Folder of input images",
                                              show_default="generated PNGs"),
        workdir: Path = typer.Option(Path("runs/bench_infer"), help="Where the bench bundle/PNGs/exports go"),
        device: str = typer.Option("cpu", help="Device: cpu: latency + img/s per backend; cuda: batch img/s"),
        size: int = typer.Option(224, help="Model input side in px"), n: int = typer.Option(64, help="Images for latency/throughput"),
        threads: int = typer.Option(0, help="CPU threads (0: all cores)"),
        backends: Optional[List[str]] = typer.Option(None, help="BACKEND-PRECISION, repeatable",
                                                     show_default="torch-fp32, onnx-fp32, onnx-int8, and "
                                                     "openvino-fp32/int8/bf16 when openvino is installed"),
        batch_size: int = typer.Option(256, help="GPU batch"), compile: bool = typer.Option(True, help="Compile the GPU model with torch.compile"),
        precision: str = typer.Option("bf16", help="GPU precision"),
        cache: Optional[Path] = typer.Option(None, help="Prepared cache: INT8 calibration (train) and the AUROC "
                                             "change fp32 -> int8 on its test split (one in-process round)"),
        rounds: int = typer.Option(5, min=0, help="CPU: fresh processes per backend, interleaved; median and "
                                   "min-max reported (0: one in-process run)"),
        folder: Optional[Path] = typer.Option(None, help="CPU: folder of full-size films for the folder throughput",
                                              show_default="generated 1024-px PNGs"),
        folder_n: int = typer.Option(64, min=1, help="CPU: films of --folder to predict"),
        out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the JSON report here (a .md table "
                                           "beside it)"),
    ) -> None:
        """Inference speed: GPU batch img/s, or per CPU backend single-film p50/p99 latency, the model-alone batch
        ceiling, folder throughput of `cxr predict` (decoding overlapped) and peak RSS, each repeated in fresh
        processes."""
        from cxrkit.deploy import bench

        workdir.mkdir(parents=True, exist_ok=True)
        if bundle is None:
            bundle = workdir / f"densenet121_{size}"
            if not (bundle / "config.json").is_file():
                bench.make_bench_bundle(bundle, "densenet121", size)
        if device.startswith("cuda"):
            _echo_json(bench.gpu_throughput(bundle, batch_size, precision=precision, compile=compile))
            return
        if cache is not None or rounds == 0:
            _echo_json(bench.cpu_report(bundle, images, workdir, n=n, size=size, threads=threads or None,
                                        backends=backends, cache=cache))
            return
        from cxrkit.deploy.bench_cpu import markdown, repeated_report

        report = repeated_report(bundle, workdir, images=images, folder=folder, rounds=rounds, n=n, size=size,
                                 folder_n=folder_n, threads=threads or None, backends=backends,
                                 progress=lambda line: typer.echo(line, err=True))
        _echo_json(report)
        typer.echo(markdown(report))
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(report, indent=2))
            out.with_suffix(".md").write_text(markdown(report) + "\n")

    # `cxr serve` / `cxr bench serve` are registered by cxrkit.deploy.serve.cli_serve (its own STAGE_CLIS entry).
    app.add_typer(gate_app, name="gate")

