"""`cxr serve` (the REST service and web page) and `cxr bench serve` (load benchmark)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

SERVE_MODULES = ("fastapi", "uvicorn", "multipart", "prometheus_client")


def require_serve_extra(extra: tuple[str, ...] = ()) -> None:
    """A clear error instead of an ImportError when the optional serving dependencies are missing."""
    import importlib.util

    from cxrkit.deploy.serve.errors import ServeError

    missing = [m for m in SERVE_MODULES + extra if importlib.util.find_spec(m) is None]
    if missing:
        raise ServeError(f"serving needs {', '.join(missing)}: pip install 'cxrkit[serve]'")


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    @app.command("serve")
    def serve_cmd(
        bundle: Path = typer.Argument(..., help="Bundle directory (with --backend onnx: its model.onnx is used)"),
        host: str = typer.Option("127.0.0.1", help="Address to listen on (0.0.0.0: every interface)"),
        port: int = typer.Option(8000, min=1, max=65535, help="TCP port to listen on, 1-65535"),
        api_key: Optional[str] = typer.Option(None, help="API key clients send in X-API-Key (visible to other users "
                                              "in `ps`: prefer $CXR_API_KEY or --api-key-file)",
                                              show_default="$CXR_API_KEY"),
        api_key_file: Optional[Path] = typer.Option(None, help="Read the API key from this file (first line)"),
        no_auth: bool = typer.Option(False, "--no-auth", help="No API key; only allowed on a loopback --host"),
        max_batch: int = typer.Option(16, min=1, help="Micro-batch size limit (1: batching off)"),
        max_wait_ms: float = typer.Option(10.0, min=0.0, help="How long a batch waits to fill"),
        max_upload_mb: float = typer.Option(20.0, min=0.001, help="Request body limit (413 above it)"),
        timeout_s: float = typer.Option(30.0, min=0.01, help="Per-request limit (504 after it)"),
        max_queue: int = typer.Option(256, min=1, help="Requests allowed to wait for the model (503 beyond)"),
        max_inflight_mb: float = typer.Option(256.0, min=1.0, help="Upload bytes held by requests in progress "
                                              "(503 beyond)"),
        max_heatmaps: int = typer.Option(2, min=1, help="Heatmap requests in progress at once (503 beyond)"),
        max_connections: int = typer.Option(512, min=1, help="Open connections (more: 503 and closed)"),
        header_timeout_s: float = typer.Option(10.0, min=0.1, help="Time to send the request headers (408 after)"),
        body_timeout_s: float = typer.Option(60.0, min=0.1, help="Time to send the request body (408 after)"),
        workers: int = typer.Option(1, min=1, help="Server processes (each loads the model)"),
        backend: str = typer.Option("auto", help="Runtime: auto (the fastest this machine and bundle have; GET "
                                    "/v1/model says which and why), torch, onnx or openvino (the last two run "
                                    "BUNDLE/model*.onnx)"),
        device: str = typer.Option("cpu", help="Device: cpu or cuda"),
        precision: str = typer.Option("auto", help="Precision: auto (INT8 only within its recorded accuracy "
                                      "tolerance), torch fp32/bf16/fp16; onnx fp32/int8; openvino fp32/int8/bf16"),
        log_level: str = typer.Option("info", help="Log level: debug, info, warning or error"),
        worklist: Optional[Path] = typer.Option(None, help="A `cxr node` --spool folder: serve its triaged worklist "
                                                "(GET /v1/worklist and the page's Worklist tab)", show_default=False),
    ) -> None:
        """Serve a bundle over HTTP: POST /v1/predict, GET /v1/model, /healthz, /readyz, /metrics and a web page at /
        (with --worklist: also a node's triaged worklist, GET /v1/worklist).

        Auth is on by default (X-API-Key). Logs hold request ids, sizes, status and latency only: never file
        names or DICOM patient fields. Research use only.
        """
        import logging
        import os

        require_serve_extra()
        import uvicorn

        from cxrkit import RESEARCH_NOTICE
        from cxrkit.bundle import SYNTHETIC_WARNING, read_bundle_config, trained_on_synthetic
        from cxrkit.deploy.serve.app import CONFIG_ENV, MB, create_app
        from cxrkit.deploy.serve.auth import API_KEY_ENV, read_key_file, resolve_api_key
        from cxrkit.deploy.serve.engine import quiet_decoder_logs
        from cxrkit.deploy.serve.errors import ServeError
        from cxrkit.deploy.serve.native_stderr import route_native_stderr
        from cxrkit.deploy.serve.protocol import HttpLimits, guarded_protocol

        if api_key is not None and api_key_file is not None:
            raise ServeError("both --api-key and --api-key-file were given; drop one of them")
        if api_key is not None:
            typer.secho("warning: --api-key on the command line is visible to other users of this machine (ps); "
                        f"prefer ${API_KEY_ENV} or --api-key-file", fg=typer.colors.YELLOW, err=True)
        key = resolve_api_key(read_key_file(api_key_file) if api_key_file else api_key, no_auth=no_auth, host=host)
        if not bundle.exists():
            raise ServeError(f"{bundle}: no such bundle directory (cxr train writes RUN_DIR/bundle)")
        level = log_level.upper()
        if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ServeError(f"--log-level {log_level!r}: choose debug, info, warning or error")
        route_native_stderr()  # before logging is configured: handlers bind to the new sys.stderr
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
        quiet_decoder_logs()
        settings = {"max_upload_bytes": int(max_upload_mb * MB), "max_batch": max_batch, "max_wait_ms": max_wait_ms,
                    "timeout_s": timeout_s, "max_queue": max_queue, "backend": backend, "device": device,
                    "precision": precision, "worklist_spool": str(worklist.resolve()) if worklist else None,
                    "max_inflight_bytes": int(max_inflight_mb * MB), "max_heatmaps": max_heatmaps,
                    "body_timeout_s": body_timeout_s, "body_idle_timeout_s": min(10.0, body_timeout_s)}
        http = guarded_protocol(HttpLimits(header_timeout_s=header_timeout_s, max_connections=max_connections))
        # the bundle is loaded (or at least its config checked) before anything says "serving"
        app_obj = create_app(bundle, api_key=key, allow_no_auth_localhost=key is None, **settings) \
            if workers == 1 else read_bundle_config(bundle)
        typer.secho(RESEARCH_NOTICE, fg=typer.colors.YELLOW, err=True)
        config = app_obj if isinstance(app_obj, dict) else app_obj.state.service.predictor.config
        if trained_on_synthetic(config):
            typer.secho(f"warning: {SYNTHETIC_WARNING}", fg=typer.colors.YELLOW, err=True)
        auth = "API key required (X-API-Key)" if key else "NO AUTH: anything reaching this loopback port, port " \
            "forwards included"
        if not isinstance(app_obj, dict):
            choice = app_obj.state.service.runtime_choice or {}
            typer.echo(f"runtime: {choice.get('backend')}-{choice.get('precision')} ({choice.get('chosen')}: "
                       f"{choice.get('reason')})", err=True)
        typer.echo(f"serving {bundle} on http://{host}:{port}  [{auth}; batch <= {max_batch}, wait {max_wait_ms:g} ms; "
                   f"{workers} worker(s)]", err=True)
        common = dict(host=host, port=port, log_level=log_level.lower(), access_log=False, timeout_graceful_shutdown=10,
                      http=http)
        if workers == 1:
            uvicorn.run(app_obj, **common)
            return
        # Worker processes build their own app from the environment (uvicorn needs an import string for them).
        os.environ[CONFIG_ENV] = json.dumps({"bundle": str(bundle.resolve()), "no_auth": key is None, **settings})
        if key:
            os.environ[API_KEY_ENV] = key
        uvicorn.run("cxrkit.deploy.serve.app:app_from_env", factory=True, workers=workers, **common)

    @groups["bench"].command("serve")
    def bench_serve_cmd(
        bundle: Path = typer.Argument(..., help="Bundle directory"),
        duration: float = typer.Option(60.0, min=1.0, max=3600.0, help="Seconds of load per mode"),
        concurrency: int = typer.Option(8, min=1, max=256, help="Clients sending back to back"),
        image: Optional[Path] = typer.Option(None, help="PNG/JPEG/DICOM to send",
                                        show_default="a synthetic 1024-px film"),
        max_batch: int = typer.Option(16, min=2, help="Batch limit of the batched mode"),
        max_wait_ms: float = typer.Option(10.0, min=0.0, help="How long a batch waits to fill"),
        modes: str = typer.Option("batched,unbatched", help="Comma-separated: batched, unbatched"),
        max_requests: int = typer.Option(1_000_000, min=1, help="Stop a mode after this many requests"),
        backend: str = typer.Option("auto", help="Runtime: auto, torch, onnx or openvino (as for cxr serve)"),
        device: str = typer.Option("cpu", help="Device: cpu or cuda (the server's device)"),
        precision: str = typer.Option("auto", help="As for cxr serve --precision"),
        out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the results JSON here (a .md table beside it)"),
    ) -> None:
        """Throughput, p50/p99 latency and server memory under sustained loopback load, micro-batching on vs off.

        Starts a `cxr serve` subprocess per mode on 127.0.0.1 (random port, no auth: loopback only), stops it after
        --duration seconds or --max-requests. For the memory-over-time figure use --duration 600.
        """
        import shlex
        import sys

        require_serve_extra(("httpx",))  # the load generator's client
        from rich.console import Console
        from rich.table import Table

        from cxrkit.deploy.serve.bench_load import markdown, run_mode, synthetic_film_png
        from cxrkit.deploy.serve.errors import ServeError

        wanted = [m.strip() for m in modes.split(",") if m.strip()]
        if not wanted or set(wanted) - {"batched", "unbatched"}:
            raise ServeError(f"--modes {modes!r}: use batched, unbatched or both (comma-separated)")
        if image is not None and not image.is_file():
            raise ServeError(f"--image {image}: file not found")
        payload = image.read_bytes() if image else synthetic_film_png()
        desc = f"{image.name} ({len(payload)} bytes)" if image else f"synthetic 1024 x 1024 PNG ({len(payload)} bytes)"
        console = Console(stderr=True)
        results = []
        for mode in wanted:
            mb = max_batch if mode == "batched" else 1
            console.print(f"[bold]{mode}[/]: max batch {mb}, {concurrency} clients, {duration:g} s ...")
            results.append(run_mode(bundle, payload, max_batch=mb, max_wait_ms=max_wait_ms, concurrency=concurrency,
                                    duration_s=duration, max_requests=max_requests, backend=backend,
                                    device=device, precision=precision))
        table = Table(title="cxr bench serve (loopback)")
        for col in ("mode", "req/s", "p50 ms", "p99 ms", "mean batch", "RSS max MB", "errors"):
            table.add_column(col)
        for mode, r in zip(wanted, results):
            table.add_row(mode, str(r["req_per_s"]), str(r["p50_ms"]), str(r["p99_ms"]), str(r["mean_batch"]),
                          str(r["rss_max_mb"]), str(r["errors"] or 0))
        console.print(table)
        command = "cxr bench serve " + " ".join(shlex.quote(a) for a in sys.argv[3:]) if len(sys.argv) > 3 else \
            f"cxr bench serve {bundle} --duration {duration:g} --concurrency {concurrency}"
        md = markdown(results, command, desc)
        typer.echo(md)
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps({"command": command, "image": desc, "results": results}, indent=2))
            out.with_suffix(".md").write_text(md)
