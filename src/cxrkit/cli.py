"""The `cxr` command: a thin Typer shell over the library API.

Each pipeline stage owns a ``cli`` module with ``register(app, groups)`` that adds its commands; heavy imports
(torch, ...) happen inside the command functions so `cxr --help` stays fast.
"""
from __future__ import annotations

import errno
import importlib
import os
import sys
from collections.abc import Sequence

import typer

from cxrkit import RESEARCH_NOTICE, __version__

STAGE_CLIS = (
    "cxrkit.data.cli",
    "cxrkit.models.cli",
    "cxrkit.training.cli",
    "cxrkit.tuning.cli",
    "cxrkit.evaluation.cli",
    "cxrkit.explain.cli",
    "cxrkit.deploy.cli",
    "cxrkit.demo",
    "cxrkit.deploy.serve.cli_serve",
    "cxrkit.deploy.dicom.cli",
    "cxrkit.deploy.serve.cli_hardening",
)


def build_app(stages: Sequence[str] = STAGE_CLIS) -> typer.Typer:
    """The `cxr` app with the commands of ``stages`` (every stage by default; tests may build one stage alone)."""
    app = typer.Typer(
        name="cxr",
        help=f"cxrkit {__version__}: chest X-ray classifiers, trained, evaluated, explained and served.\n\n{RESEARCH_NOTICE}",
        no_args_is_help=True,
        pretty_exceptions_show_locals=False,
    )
    groups = {
        "data": typer.Typer(help="Inspect datasets and prepared caches.", no_args_is_help=True),
        "bench": typer.Typer(help="Benchmarks (results go in docs/benchmarks.md).", no_args_is_help=True),
    }
    for name in stages:
        importlib.import_module(name).register(app, groups)
    for name, group in groups.items():
        app.add_typer(group, name=name)

    @app.command("version")
    def version() -> None:
        """Print the cxrkit version."""
        typer.echo(__version__)

    return app


def main(argv: list[str] | None = None) -> None:
    from cxrkit.data.errors import CxrError

    app = build_app()
    try:
        code = app(args=argv, standalone_mode=False)  # non-standalone click returns typer.Exit's code instead
    except CxrError as exc:  # expected, user-facing failures: one clear line, no traceback
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        sys.exit(2)
    except OSError as exc:
        message, code = _os_error_message(exc)
        if message is None or os.environ.get("CXR_DEBUG"):
            raise
        typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
        sys.exit(code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        typer.secho("aborted", err=True)
        sys.exit(130)
    except _usage_errors() as exc:  # bad option, missing argument, typo'd command: click's short usage message
        if hasattr(exc, "show"):
            exc.show()
        else:
            typer.secho(f"Error: {exc}", err=True)
        sys.exit(exc.exit_code)
    if isinstance(code, int) and code:
        sys.exit(code)


_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
# a path the user gave that cannot be read or written (a typo, a folder under a file, a read-only mount)
_BAD_PATH = (errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EACCES, errno.EPERM, errno.EROFS)


def _os_error_message(exc: OSError) -> tuple[str | None, int]:
    """One line and an exit code for the OS errors a user can fix (a full disk: 1; a path that cannot be used: 2),
    (None, 0) for anything else, which keeps its traceback. CXR_DEBUG=1 keeps the traceback of these too."""
    if exc.errno in _DISK_FULL:
        # checkpoints, bundles and cache chunks are written atomically (temporary file + rename): finished work
        # survives, and the reports a rerun rewrites anyway are the only files a full disk can leave cut short
        where = f" while writing {exc.filename}" if exc.filename else ""
        return (f"the disk is full ({exc.strerror}){where}. Free space and run the same command again: cxr prepare "
                "and cxr learning-curve go on where they stopped, cxr train and cxr pretrain with --resume; finished "
                "checkpoints, bundles and cache chunks are intact"), 1
    if exc.errno in _BAD_PATH and exc.filename:
        return (f"cannot use {exc.filename}: {exc.strerror}. Check the path: its folders must exist (or be "
                "creatable) and be readable, and writable for outputs (CXR_DEBUG=1 shows where it failed)"), 2
    return None, 0


def _usage_errors() -> tuple[type[Exception], ...]:
    """The exception classes a usage mistake raises in non-standalone mode.

    Recent typer vendors its own click (``typer._click``) whose ``ClickException`` derives from the public
    ``typer.TyperException``, not from ``click.ClickException``; older typer raises click's own. Catch both.
    """
    classes = [getattr(typer, "TyperException", None)]
    try:
        import click

        classes.append(click.ClickException)
    except ImportError:  # a typer that vendors click need not install it
        pass
    return tuple(c for c in dict.fromkeys(classes) if c is not None)


if __name__ == "__main__":
    main()
