"""Rebuild docs/img/phantom_findings.png: one phantom film per NIH finding, each with its ground-truth box.

Usage:
    python tools/phantom_contact_sheet.py [--out PATH] [--tile PX] [--seed K] [--difficulty LEVEL]
"""
from __future__ import annotations

import argparse
from pathlib import Path

from cxrkit.data.phantom.difficulty import resolve_difficulty
from cxrkit.data.phantom.sheet import contact_sheet

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "docs" / "img" / "phantom_findings.png"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--tile", type=int, default=176)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--difficulty", default="default", help="level in [0, 1] or easy/default/hard")
    args = ap.parse_args(argv)
    path = contact_sheet(args.out, tile=args.tile, seed=args.seed, difficulty=resolve_difficulty(args.difficulty))
    print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KB)")


if __name__ == "__main__":
    main()
