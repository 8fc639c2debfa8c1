"""Move a bundle through a size-limited channel: ``pack`` stores its weights as fp16 (half the bytes), ``unpack``
restores an fp32 bundle from that. The restored model equals the original up to fp16 rounding of the weights; use it
where that is irrelevant (e.g. comparing fp32 vs INT8 exports of the *restored* model), never as the original.

    python tools/fp16_bundle.py pack BUNDLE OUT_DIR      # OUT_DIR/config.json + OUT_DIR/model.fp16.safetensors
    python tools/fp16_bundle.py unpack OUT_DIR BUNDLE    # a loadable fp32 bundle
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from safetensors.torch import load_file, save_file


def pack(bundle: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    state = load_file(bundle / "model.safetensors")
    # conv and linear weights only: BatchNorm statistics and biases are small and rounding them costs accuracy
    save_file({k: (v.half() if v.is_floating_point() and v.ndim >= 2 else v).contiguous() for k, v in state.items()},
              out / "model.fp16.safetensors")
    shutil.copy(bundle / "config.json", out / "config.json")


def unpack(packed: Path, bundle: Path) -> None:
    import torch

    bundle.mkdir(parents=True, exist_ok=True)
    state = load_file(packed / "model.fp16.safetensors")
    save_file({k: (v.to(torch.float32) if v.is_floating_point() else v).contiguous() for k, v in state.items()},
              bundle / "model.safetensors")
    config = json.loads((packed / "config.json").read_text())
    config.setdefault("provenance", {})["note"] = "weights restored from an fp16 copy (tools/fp16_bundle.py)"
    (bundle / "config.json").write_text(json.dumps(config, indent=2) + "\n")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["pack", "unpack"])
    ap.add_argument("src", type=Path)
    ap.add_argument("dst", type=Path)
    a = ap.parse_args()
    (pack if a.mode == "pack" else unpack)(a.src, a.dst)
