"""`python -m cxrkit.training.pretrain ...` = `cxr pretrain ...` (for torchrun: `torchrun -m cxrkit.training.pretrain
SOURCE --out DIR`)."""
from __future__ import annotations

import sys

import typer


def main(argv: list[str] | None = None) -> None:
    from cxrkit.data.errors import CxrError
    from cxrkit.training.pretrain.cli import pretrain_command

    app = typer.Typer(add_completion=False, pretty_exceptions_show_locals=False)
    app.command()(pretrain_command)
    try:
        app(args=argv, standalone_mode=False)
    except CxrError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
