"""Reading and writing the bundle directory: ``config.json`` + ``model.safetensors``. No pickle anywhere."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import torch

from cxrkit import RESEARCH_NOTICE, __version__
from cxrkit.data.errors import CxrError
from cxrkit.fileio import atomic_write_json, fsync_dir

BUNDLE_FORMAT = "cxrkit-bundle"
BUNDLE_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
REQUIRED_KEYS = ("format", "format_version", "model", "input", "label_names", "thresholds")


class BundleError(CxrError):
    """A bundle directory is missing, incomplete, or from an unknown format version."""


def write_bundle_config(bundle_dir: str | Path, config: dict[str, Any]) -> None:
    """(Re)write config.json atomically - used to add calibration, a quality gate, metrics... after training."""
    missing = [k for k in REQUIRED_KEYS if k not in config]
    if missing:
        raise BundleError(f"bundle config lacks {missing}")
    atomic_write_json(Path(bundle_dir) / CONFIG_NAME, config)


def save_bundle(out_dir: str | Path, model: torch.nn.Module | None, *, label_names, input_size: int,
                preresize: int | None = None, mean: float, std: float, thresholds: dict[str, float] | None = None,
                provenance: dict | None = None, metrics: dict | None = None, extra: dict | None = None,
                state_dict: dict[str, torch.Tensor] | None = None) -> Path:
    """Write a bundle. ``model`` must be a :class:`cxrkit.models.CXRModel` (its ``spec()`` is stored).

    ``preresize``: the square size images are first brought to with ``fit_square`` (the cache size the model was
    trained from); the model input is then resized to ``input_size`` exactly as in training.
    """
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    label_names = list(label_names)
    thresholds = thresholds or {n: 0.5 for n in label_names}
    config = {
        "format": BUNDLE_FORMAT,
        "format_version": BUNDLE_VERSION,
        "notice": RESEARCH_NOTICE,
        "model": model.spec() if model is not None else None,
        # range: what the network sees, (pixel/255 - mean)/std over pixels 0..255; polarity: bright bone
        # (MONOCHROME2), the way read_image delivers every film; the predictor warns on inputs that disagree
        "input": {"size": int(input_size), "preresize": int(preresize or input_size), "channels": 1,
                  "resize": "fit_square", "mean": float(mean), "std": float(std),
                  "range": [float(-mean / std), float((1.0 - mean) / std)], "polarity": "MONOCHROME2"},
        "label_names": label_names,
        "thresholds": {n: float(thresholds[n]) for n in label_names},
        "calibration": None,
        "quality_gate": None,
        "provenance": {"cxrkit_version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                       **(provenance or {})},
        "metrics": metrics or {},
        **(extra or {}),
    }
    if model is not None or state_dict is not None:
        sd = state_dict if state_dict is not None else model.state_dict()
        sd = {k: v.detach().to("cpu").contiguous() for k, v in sd.items()}
        tmp = out / f".{WEIGHTS_NAME}.tmp"
        save_file(sd, str(tmp), metadata={"format": BUNDLE_FORMAT})
        # safetensors creates its file 0600; give it the mode of the bundle's other files (0666 less the umask)
        os.chmod(tmp, 0o666 & ~_umask())
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, out / WEIGHTS_NAME)
        fsync_dir(out)
    write_bundle_config(out, config)
    return out


def _umask() -> int:
    """The process umask, read without changing it (Linux); 0o022 where /proc is unavailable."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    return 0o022


def _format_of(path: Path) -> Any:
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return config.get("format") if isinstance(config, dict) else None


def read_bundle_config(bundle_dir: str | Path) -> dict[str, Any]:
    path = Path(bundle_dir) / CONFIG_NAME
    inner = Path(bundle_dir) / "bundle" / CONFIG_NAME
    if inner.is_file() and (not path.is_file() or _format_of(path) != BUNDLE_FORMAT):
        raise BundleError(f"{bundle_dir} is a training run folder, not a bundle: did you mean "
                          f"{Path(bundle_dir) / 'bundle'}?")
    if not path.is_file():
        raise BundleError(f"{bundle_dir} is not a cxrkit bundle: {CONFIG_NAME} not found (cxr train writes bundles "
                          "to RUN_DIR/bundle)")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path} is not valid JSON: {exc}") from exc
    if config.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{path}: format is {config.get('format')!r}, expected {BUNDLE_FORMAT!r}")
    if int(config.get("format_version", -1)) > BUNDLE_VERSION:
        raise BundleError(f"{path}: bundle format_version {config['format_version']} is newer than this cxrkit "
                          f"({__version__}) understands ({BUNDLE_VERSION}); upgrade cxrkit")
    missing = [k for k in REQUIRED_KEYS if k not in config]
    if missing:
        raise BundleError(f"{path} lacks required keys {missing}")
    return config


def read_bundle_weights(bundle_dir: str | Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(bundle_dir) / WEIGHTS_NAME
    if not path.is_file():
        raise BundleError(f"{bundle_dir}: {WEIGHTS_NAME} not found")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise BundleError(f"{path} is not a readable safetensors file: {exc}") from exc
