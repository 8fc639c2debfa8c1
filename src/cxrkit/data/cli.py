"""Data commands: `cxr phantom`, `cxr prepare`, `cxr data summary`, `cxr bench prepare`, `cxr bench loader`.

Thin: every command parses options, calls one library function, prints its result.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    """Add the data stage's commands to the root app and the ``data`` / ``bench`` groups."""

    @app.command("phantom")
    def phantom(
        out: Annotated[Path, typer.Argument(help="Folder to write the NIH-layout phantom set into.")],
        n: Annotated[int, typer.Option("--n", "-n", help="Number of images.")] = 1000,
        size: Annotated[int, typer.Option(help="Image side in pixels.")] = 256,
        seed: Annotated[int, typer.Option(help="Random seed (same seed, same set).")] = 0,
        difficulty: Annotated[Optional[str], typer.Option(
            help="A level from 0 (easy) to 1 (hard), or easy / default / hard.")] = None,
        workers: Annotated[int, typer.Option(help="Processes drawing images.")] = 1,
        overwrite: Annotated[bool, typer.Option(help="Replace a phantom set made with other settings.")] = False,
    ) -> None:
        """Generate a synthetic chest X-ray set with known findings and boxes (NIH layout)."""
        from cxrkit.data.phantom import generate

        level: float | str | None = difficulty
        if difficulty is not None:
            try:
                level = float(difficulty)
            except ValueError:
                level = difficulty  # a preset name; generate() validates it
        s = generate(out, n, size=size, seed=seed, difficulty=level, workers=workers, progress=True,
                     overwrite=overwrite)
        typer.echo(f"phantom set in {s.out_dir}: {s.n_images} images of {s.size} px, {s.n_patients} patients, "
                   f"{s.n_boxes} boxes (seed {s.seed})")

    @app.command("prepare")
    def prepare(
        source: Annotated[Path, typer.Argument(help="Dataset folder or label CSV (NIH, CheXpert, CSV, DICOM).")],
        out: Annotated[Path, typer.Argument(help="Cache folder to write (resumed if interrupted).")],
        size: Annotated[int, typer.Option(help="Side of the square cached images, in pixels.")] = 256,
        format: Annotated[str, typer.Option(help="Dataset format: auto, nih, chexpert, csv or dicom.")] = "auto",
        workers: Annotated[Optional[int], typer.Option(help="Decoding processes.", show_default="all cores")] = None,
        seed: Annotated[int, typer.Option(help="Seed of the patient split.")] = 0,
        split: Annotated[str, typer.Option(
            help="Split policy: auto (the source's official split where it ships one, else by patient), patient "
                 "(by patient, official lists ignored) or none (every image test: an external set to score).")]
        = "auto",
        fractions: Annotated[str, typer.Option(
            help="Train,val,test shares of the patient split (an official test list stays test), e.g. 0.8,0.2,0.")]
        = "0.7,0.1,0.2",
        uncertainty: Annotated[Optional[str], typer.Option(
            help="CheXpert uncertain (-1) labels: ignore, zeros, ones, lsr-ones, lsr-zeros, chexpert-best, or "
                 "per class, e.g. zeros,Atelectasis=ones,Edema=ones (a bare policy covers the classes not named).",
            show_default="ignore")] = None,
        overwrite: Annotated[bool, typer.Option(help="Replace a different cache already in OUT.")] = False,
        chunk_rows: Annotated[int, typer.Option(help="Images per resumable unit of work.")] = 64,
        quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
    ) -> None:
        """Decode and resize every image once into a memory-mapped cache for fast training."""
        from cxrkit.data.cache import prepare as run

        extra = {}
        if uncertainty is not None:
            extra["uncertainty"] = _uncertainty_for(source, format, uncertainty)
        cache = run(source, out, size=size, format=format, split_seed=seed, fractions=_fractions(fractions),
                    split=split, workers=workers, overwrite=overwrite, progress=not quiet, chunk_rows=chunk_rows,
                    **extra)
        m = cache.manifest
        counts = ", ".join(f"{k} {v}" for k, v in m["split"]["counts"].items())
        typer.echo(f"cache {out}: {m['n_images']} images of {m['size']} px ({counts}; split {m['split']['policy']}"
                   f"); {m['n_bad']} unreadable" + (f", see {out / 'bad_files.csv'}" if m["n_problems"] else ""))
        if m["split"].get("n_unlisted"):
            typer.echo(f"note: {m['split']['n_unlisted']} images are in none of the source's official split lists "
                       "(NIH: train_val_list.txt / test_list.txt); they were split by patient into train/val")
        if m.get("label_policy"):
            pol = m["label_policy"]["uncertainty"]
            kinds = sorted(set(pol.values()))
            shown = kinds[0] if len(kinds) == 1 else ", ".join(f"{k}={v}" for k, v in pol.items() if v != "ignore")
            typer.echo(f"uncertain labels: {shown} (recorded in {out / 'manifest.json'})")

    @groups["data"].command("summary")
    def summary(
        cache: Annotated[Path, typer.Argument(help="A cache folder made by cxr prepare.")],
        out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Where to write summary.json/.png.",
                                                        show_default="CACHE")]
        = None,
    ) -> None:
        """Prevalence per finding per split, patients, age, sex and view of a cache (table, PNG, JSON)."""
        from rich.console import Console

        from cxrkit.data.cache import open_cache
        from cxrkit.data.summary import render_table, write_summary

        result, json_path, png_path = write_summary(open_cache(cache), out)
        Console().print(render_table(result))
        typer.echo(f"wrote {json_path} and {png_path}")

    @groups["bench"].command("prepare")
    def bench_prepare(
        source: Annotated[Path, typer.Argument(help="Dataset of image files (PNG/JPEG) to prepare.")],
        size: Annotated[int, typer.Option(help="Cache image side.")] = 256,
        workers: Annotated[Optional[int], typer.Option(help="Processes for both contenders.", show_default="all cores")]
        = None,
        repeat: Annotated[int, typer.Option(help="Runs per contender (best counts).")] = 1,
    ) -> None:
        """cxr prepare img/s vs a raw cv2.imread + cv2.resize loop on as many processes (goal: ratio >= 0.9)."""
        from cxrkit.data.bench import bench_prepare as run

        r = run(source, size=size, workers=workers, repeat=repeat)
        typer.echo(f"{r['images']} images at {size} px on {r['workers']} processes: prepare "
                   f"{r['prepare_img_s']:.0f} img/s, raw OpenCV {r['raw_img_s']:.0f} img/s, ratio {r['ratio']:.2f}")
        typer.echo(json.dumps(r))

    @groups["bench"].command("loader")
    def bench_loader(
        cache: Annotated[Path, typer.Argument(help="A cache folder made by cxr prepare.")],
        batch_size: Annotated[int, typer.Option(help="Images per batch.")] = 256,
        epochs: Annotated[int, typer.Option(help="Passes over the cache (best counts).")] = 3,
        device: Annotated[Optional[str], typer.Option(help="Device to load batches onto, e.g. cuda; default: stay on the CPU.")] = None,
        pin_memory: Annotated[Optional[bool], typer.Option("--pin-memory/--no-pin-memory",
                                                           help="Default: on for CUDA.")] = None,
    ) -> None:
        """img/s of CacheLoader iterating a cache (one thread; goal >= 5,000 img/s at 256 px)."""
        from cxrkit.data.bench import bench_loader as run
        from cxrkit.data.cache import open_cache

        r = run(open_cache(cache), batch_size=batch_size, epochs=epochs, device=device, pin_memory=pin_memory)
        typer.echo(f"{r['images']} images of {r['size']} px per epoch on {r['device']} (pin {r['pin_memory']}): "
                   f"{r['img_s']:.0f} img/s ({r['mb_s']:.0f} MB/s)")
        typer.echo(json.dumps(r))


def _fractions(text: str) -> tuple[float, float, float]:
    from cxrkit.data.errors import DatasetError

    try:
        parts = tuple(float(x) for x in text.split(","))
    except ValueError:
        parts = ()
    if len(parts) != 3:
        raise DatasetError(f"--fractions {text!r}: give three comma-separated shares train,val,test, e.g. 0.7,0.1,0.2")
    return parts  # type: ignore[return-value]


def _uncertainty_for(source: Path, format: str, text: str):
    """--uncertainty only means something to the CheXpert reader: refuse it for other sources instead of ignoring."""
    from cxrkit.data.datasets import detect_format
    from cxrkit.data.datasets.chexpert import parse_uncertainty
    from cxrkit.data.errors import DatasetError

    kind = detect_format(source) if format == "auto" else format
    if kind != "chexpert":
        raise DatasetError(f"--uncertainty applies to CheXpert label tables (-1 = uncertain), but {source} reads as "
                           f"{kind}; drop --uncertainty (or pass --format chexpert for a CheXpert CSV)")
    return parse_uncertainty(text)
