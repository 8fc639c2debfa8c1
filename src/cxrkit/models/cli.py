"""`cxr import KIND FILE --out BUNDLE`: public weights (torchvision, timm, torchxrayvision, CheXNet) as a bundle."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    """Add `cxr import` to the root app."""

    @app.command("import")
    def import_cmd(
        kind: Annotated[str, typer.Argument(help="Source format: torchvision, timm, xrv-densenet121, xrv-resnet50, "
                                                 "chexnet-arnoweng or chexnet-jrzech.")],
        file: Annotated[Path, typer.Argument(help="The weights file (or bundle folder) to import.")],
        out: Annotated[Path, typer.Option("--out", "-o", help="Bundle folder to write (new or empty).")],
        arch: Annotated[Optional[str], typer.Option(
            help="Architecture of a torchvision / timm checkpoint (e.g. resnet50, timm:convnext_small).",
            show_default="densenet121 for torchvision")] = None,
        xrv_weights: Annotated[Optional[str], typer.Option(
            "--xrv-weights", help="Weights name in torchxrayvision (e.g. densenet121-res224-nih), for its label list "
                                  "and operating points.", show_default="found from the release file name")] = None,
        trust_pickle: Annotated[bool, typer.Option(
            "--trust-pickle", help="Allow unpickling a whole-model file (jrzech): this runs code from the file; "
                                   "only for files from a source you trust.")] = False,
    ) -> None:
        """Import public weights into a cxrkit bundle (labels mapped, input normalisation recorded)."""
        from cxrkit import RESEARCH_NOTICE
        from cxrkit.models.imports import import_weights
        from cxrkit.models.imports.save import save_imported

        if kind == "bundle":
            from cxrkit.models.imports import ImportWeightsError

            raise ImportWeightsError(f"{file} is already a bundle: use it as it is, or pass --pretrained {file} to "
                                     "cxr train to start a new task from it")
        imported = import_weights(kind, file, trust_pickle=trust_pickle, arch=arch, weights_name=xrv_weights)
        path = save_imported(imported, out)
        inp = imported.input
        dropped = imported.source.get("dropped_outputs")
        typer.echo(f"imported {kind} {file.name} as a {imported.arch} bundle in {path}: {len(imported.label_names)} "
                   f"findings, input {inp['size']} px, range {inp['range'][0]:g}..{inp['range'][1]:g}"
                   + (f", calibration {imported.calibration['method']}" if imported.calibration else ""))
        if dropped:
            typer.echo(f"outputs without a cxrkit finding, left out: {', '.join(dropped)}")
        if not imported.head_trained:
            typer.echo("no chest-finding head in this file: the bundle's head is untrained; fine-tune it with "
                       f"`cxr train CACHE --out RUN --arch {imported.arch} --pretrained {path}`")
        typer.echo(RESEARCH_NOTICE)
