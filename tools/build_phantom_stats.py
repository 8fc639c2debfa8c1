"""Rebuild src/cxrkit/data/phantom/stats.json from the real NIH ChestX-ray14 label table.

Usage:
    python tools/build_phantom_stats.py [NIH_TABLE] [--out PATH]

NIH_TABLE defaults to ../shared/data/nih-metadata/Data_Entry_2017_v2020.csv.gz beside the checkout. Only
aggregate statistics (prevalences, frequent label sets, histograms) are written, never per-image rows.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from cxrkit.data.phantom.stats import build_stats, write_stats

REPO = Path(__file__).resolve().parents[1]
DEFAULT_TABLE = REPO.parent / "shared" / "data" / "nih-metadata" / "Data_Entry_2017_v2020.csv.gz"
DEFAULT_OUT = REPO / "src" / "cxrkit" / "data" / "phantom" / "stats.json"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("table", nargs="?", type=Path, default=DEFAULT_TABLE, help="NIH Data_Entry CSV (.gz ok)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write stats.json")
    args = ap.parse_args(argv)
    if not args.table.is_file():
        raise SystemExit(f"NIH table not found: {args.table} (pass its path)")
    stats = build_stats(args.table)
    path = write_stats(stats, args.out)
    print(f"wrote {path} ({path.stat().st_size / 1024:.1f} KB): {stats['n_images']} images, "
          f"{stats['n_patients']} patients, {len(stats['combos'])} label sets covering "
          f"{stats['combos_coverage']:.2%} of images")


if __name__ == "__main__":
    main()
