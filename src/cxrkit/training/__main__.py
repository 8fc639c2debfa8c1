"""`python -m cxrkit.training ...` = `cxr train ...` (handy under torchrun: `torchrun -m cxrkit.training CACHE ...`)."""
from __future__ import annotations


def main(argv: list[str] | None = None) -> None:
    from cxrkit.training.cli import train_command
    from cxrkit.training.entry import run_single_command

    run_single_command(train_command, argv)


if __name__ == "__main__":
    main()
