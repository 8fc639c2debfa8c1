"""`cxr bench fuzz` (mutation fuzzing of the decoder and of a running service) and `cxr bench soak` (sustained
mixed load with memory sampled). Results go in docs/benchmarks.md."""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer


def _write(result: dict, out: Optional[Path]) -> None:
    text = json.dumps(result, indent=2)
    typer.echo(text)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    @groups["bench"].command("fuzz")
    def bench_fuzz_cmd(
        bundle: Optional[Path] = typer.Argument(None, help="Bundle to serve (needed for --target service)"),
        target: str = typer.Option("decode", help="Decode (read_image in a watched child process), service "
                                   "(a real cxr serve on 127.0.0.1) or both"),
        cases: int = typer.Option(1000, min=1, max=10_000_000, help="Mutated files per target"),
        time_limit_s: float = typer.Option(600.0, min=1.0, help="Stop a target after this long"),
        case_timeout_s: float = typer.Option(10.0, min=0.1, help="A case over this long is a hang"),
        seed: int = typer.Option(0, help="Case i is a pure function of (seed, i)"),
        seed_file: List[Path] = typer.Option([], help="Extra seed files (e.g. real DICOMs); repeatable"),
        concurrency: int = typer.Option(4, min=1, max=64, help="Service target: requests in flight"),
        out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the results JSON here"),
    ) -> None:
        """Mutation fuzzing of PNG, JPEG and DICOM (header fields, transfer syntaxes, fragments, LUTs): counts of
        outcomes (decode) or status codes (service). Exit 1 when anything crashed, hung or answered 5xx."""
        from cxrkit.deploy.serve.errors import ServeError

        targets = ["decode", "service"] if target == "both" else [target]
        if set(targets) - {"decode", "service"}:
            raise ServeError(f"--target {target!r}: choose decode, service or both")
        if "service" in targets and (bundle is None or not bundle.exists()):
            raise ServeError("--target service needs a BUNDLE to serve")
        missing = [str(f) for f in seed_file if not f.is_file()]
        if missing:
            raise ServeError(f"--seed-file: not found: {', '.join(missing)}")
        results = {}
        failed = False
        if "decode" in targets:
            from cxrkit.data.fuzz import fuzz_decode

            r = fuzz_decode(cases, seed=seed, time_limit_s=time_limit_s, case_timeout_s=case_timeout_s,
                            extra_files=seed_file)
            failed |= bool(r["outcomes"]["error"] or r["outcomes"]["crash"] or r["outcomes"]["hang"])
            results["decode"] = r
        if "service" in targets:
            from cxrkit.deploy.serve.cli_serve import require_serve_extra
            from cxrkit.deploy.serve.fuzz_service import fuzz_service

            require_serve_extra(("httpx",))
            r = fuzz_service(bundle, cases, seed=seed, time_limit_s=time_limit_s, concurrency=concurrency,
                             case_timeout_s=max(case_timeout_s, 60.0), extra_files=seed_file)
            failed |= bool(r["5xx"] or r["hangs"] or r["transport_errors"] or not r["server_alive"]
                           or not r["healthz_after"])
            results["service"] = r
        _write(results, out)
        if failed:
            raise typer.Exit(1)

    @groups["bench"].command("soak")
    def bench_soak_cmd(
        bundle: Path = typer.Argument(..., help="Bundle to serve"),
        clients: int = typer.Option(8, min=1, max=256, help="Clients sending back to back"),
        minutes: float = typer.Option(10.0, min=0.05, max=24 * 60.0, help="How long"),
        dicom: Optional[Path] = typer.Option(None, help="A DICOM film to add to the mix"),
        out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the results JSON here"),
    ) -> None:
        """N clients for T minutes against a real cxr serve on 127.0.0.1: PNG/JPEG/DICOM films, heatmap requests and
        bad files; RSS sampled every second; errors, latency and the memory trend. Exit 1 on any unexpected answer."""
        from cxrkit.deploy.serve.cli_serve import require_serve_extra
        from cxrkit.deploy.serve.errors import ServeError
        from cxrkit.deploy.serve.fuzz_service import soak

        require_serve_extra(("httpx",))
        if not bundle.exists():
            raise ServeError(f"{bundle}: no such bundle directory")
        if dicom is not None and not dicom.is_file():
            raise ServeError(f"--dicom {dicom}: file not found")
        r = soak(bundle, clients=clients, duration_s=minutes * 60.0, dicom=dicom)
        _write(r, out)
        if r["unexpected"] or not r["server_alive"]:
            raise typer.Exit(1)
