"""`python -m cxrkit.training.pretrain ...` = `cxr pretrain ...` (for torchrun: `torchrun -m cxrkit.training.pretrain
SOURCE --out DIR`)."""
from __future__ import annotations


def main(argv: list[str] | None = None) -> None:
    from cxrkit.training.entry import run_single_command
    from cxrkit.training.pretrain.cli import pretrain_command

    run_single_command(pretrain_command, argv)


if __name__ == "__main__":
    main()
