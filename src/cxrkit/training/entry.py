"""Run one Typer command as a whole program (the `python -m` entry points, which torchrun starts)."""
from __future__ import annotations

import sys
from typing import Callable

import typer


def run_single_command(command: Callable, argv: list[str] | None = None) -> None:
    """``command`` with ``argv`` (default: sys.argv); a CxrError is a one-line message and exit 2."""
    from cxrkit.data.errors import CxrError

    app = typer.Typer(add_completion=False, pretty_exceptions_show_locals=False)
    app.command()(command)
    try:
        app(args=argv, standalone_mode=False)
    except CxrError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        sys.exit(2)
