"""`cxr node BUNDLE ...` (the DICOM node), `cxr node retry SPOOL`, `cxr node status SPOOL`, `cxr bench node`."""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer
from typer.core import TyperGroup

DICOMNET_MODULES = ("pynetdicom", "highdicom")


class _RunByDefault(TyperGroup):
    """``cxr node BUNDLE ...`` means ``cxr node run BUNDLE ...`` (the public contract), while ``cxr node retry``
    and ``cxr node status`` stay sub-commands."""

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


def require_dicomnet() -> None:
    import importlib.util

    from cxrkit.deploy.dicom.config import NodeConfigError

    missing = [m for m in DICOMNET_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        raise NodeConfigError(f"the DICOM node needs {', '.join(missing)}: pip install 'cxrkit[dicomnet]'")


def setup_logging(level: str) -> None:
    import logging

    from cxrkit.deploy.dicom.config import NodeConfigError

    level = level.upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise NodeConfigError(f"--log-level {level.lower()!r}: choose debug, info, warning or error")
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    # pynetdicom's debug output dumps datasets (patient names included): never below WARNING in our logs
    logging.getLogger("pynetdicom").setLevel(max(logging.WARNING, logging.getLevelName(level)))


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    node_app = typer.Typer(cls=_RunByDefault, no_args_is_help=True,
                           help="The DICOM node: receive films from PACS, triage, send SR + SC back into the study.")

    @node_app.command("run")
    def run_cmd(
        bundle: Path = typer.Argument(..., help="Bundle directory (RUN_DIR/bundle)"),
        config: Optional[Path] = typer.Option(None, "--config", "-c", help="TOML file with the node settings "
                                              "(docs/dicom.md); flags override it"),
        aet: Optional[str] = typer.Option(None, "--aet", help="This node's AE title [default: CXRKIT]"),
        host: Optional[str] = typer.Option(None, help="Address to listen on [default: 127.0.0.1]"),
        port: Optional[int] = typer.Option(None, min=1, max=65535, help="Port to listen on [default: 11112]"),
        spool: Optional[Path] = typer.Option(None, help="Spool folder (received films, state, results) "
                                             "[default: cxr-node-spool]"),
        destination: Optional[List[str]] = typer.Option(None, "--destination", "-d",
                                                        help="AET@HOST:PORT that receives the SR and SC (repeatable)"),
        allow_aet: Optional[List[str]] = typer.Option(None, "--allow-aet", help="Calling AE titles allowed to send "
                                                      "(repeatable) [default: any]"),
        settle: Optional[float] = typer.Option(None, min=0.0, help="Seconds a study must be quiet before it is "
                                               "processed [default: 5]"),
        max_associations: Optional[int] = typer.Option(None, min=1, help="Concurrent associations [default: 8]"),
        webhook: Optional[str] = typer.Option(None, help="POST a de-identified JSON per processed study here"),
        backend: Optional[str] = typer.Option(None, help="Auto, torch, onnx or openvino [default: auto = the "
                                              "fastest the bundle and machine have]"),
        workers: Optional[int] = typer.Option(None, min=0, max=64, help="Processing processes (0: in the node's "
                                              "own process) [default: 2, 1 on a one-core machine]"),
        log_level: str = typer.Option("info", help="Debug, info, warning or error"),
    ) -> None:
        """Run the DICOM node until SIGTERM / Ctrl-C. Research use only."""
        require_dicomnet()
        from cxrkit import RESEARCH_NOTICE
        from cxrkit.bundle.format import BundleError
        from cxrkit.deploy.dicom.config import build_config
        from cxrkit.deploy.dicom.node import Node

        cfg = build_config(config, ae_title=aet, host=host, port=port, spool=spool,
                           destinations=tuple(destination or ()), allowed_calling_aets=tuple(allow_aet or ()),
                           settle_seconds=settle, max_associations=max_associations, webhook_url=webhook,
                           backend=backend, workers=workers)
        if not (bundle / "config.json").is_file():
            hint = f"; did you mean {bundle / 'bundle'}?" if (bundle / "bundle" / "config.json").is_file() else ""
            raise BundleError(f"{bundle}: not a bundle directory (no config.json){hint}")
        setup_logging(log_level)
        typer.secho(RESEARCH_NOTICE, fg=typer.colors.YELLOW, err=True)
        Node(bundle, cfg).run()

    @node_app.command("retry")
    def retry_cmd(
        spool: Path = typer.Argument(..., help="The node's --spool folder"),
        queue_only: bool = typer.Option(False, "--queue-only", help="Only move the dead letters back to the queue "
                                        "(a running node sends them); default: also send them now"),
        config: Optional[Path] = typer.Option(None, "--config", "-c", help="The node's TOML file (AE title, "
                                              "timeouts)"),
    ) -> None:
        """Re-send the results in the dead-letter folder."""
        require_dicomnet()
        from cxrkit.deploy.dicom.config import build_config
        from cxrkit.deploy.dicom.delivery import Delivery
        from cxrkit.deploy.dicom.spool import Spool, SpoolError

        if not (spool / "node.db").is_file():
            raise SpoolError(f"{spool}: not a node spool (no node.db); pass the folder given to `cxr node --spool`")
        setup_logging("warning")
        cfg = build_config(config, spool=spool)
        store = Spool(spool)
        n = store.requeue_dead()
        typer.echo(f"{n} result(s) moved from the dead-letter folder back to the queue")
        if queue_only or n == 0:
            return
        counts = Delivery(store, cfg).run_once()
        typer.echo(f"sent {counts['sent']}, failed again {counts['failed'] + counts['dead']}")
        if counts["failed"] or counts["dead"]:
            raise typer.Exit(1)

    @node_app.command("status")
    def status_cmd(spool: Path = typer.Argument(..., help="The node's --spool folder")) -> None:
        """Counts of instances and results by state (JSON; no identifiers)."""
        from cxrkit.deploy.dicom.spool import SpoolError, spool_status

        if not (spool / "node.db").is_file():
            raise SpoolError(f"{spool}: not a node spool (no node.db); pass the folder given to `cxr node --spool`")
        typer.echo(json.dumps(spool_status(spool), indent=2))

    app.add_typer(node_app, name="node")

    @groups["bench"].command("node")
    def bench_node_cmd(
        bundle: Path = typer.Argument(..., help="Bundle directory"),
        film: Optional[Path] = typer.Option(None, help="A chest DICOM to send (new UIDs per study) [default: a "
                                            "generated 1024 x 1024 CR film]"),
        latency_studies: int = typer.Option(50, min=1, help="Studies sent one at a time for the latency figure"),
        duration: float = typer.Option(300.0, min=1.0, help="Seconds of sustained load"),
        senders: int = typer.Option(4, min=1, max=32, help="Concurrent storescu senders"),
        workers: Optional[int] = typer.Option(None, min=0, max=64, help="The node's --workers [default: the "
                                              "node's default]"),
        out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the results JSON here (.md beside it)"),
    ) -> None:
        """Latency (last film in -> SR at the destination, settle excluded) and sustained studies/min with
        memory, against a real `cxr node` process, dcmtk's storescu as the modality, on 127.0.0.1."""
        require_dicomnet()
        from cxrkit.deploy.dicom.bench import run_bench

        result = run_bench(bundle, film=film, latency_studies=latency_studies, duration_s=duration,
                           senders=senders, workers=workers,
                           progress=lambda line: typer.echo(f"[bench node] {line}", err=True))
        typer.echo(result["markdown"])
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps({k: v for k, v in result.items() if k != "markdown"}, indent=2))
            out.with_suffix(".md").write_text(result["markdown"])
