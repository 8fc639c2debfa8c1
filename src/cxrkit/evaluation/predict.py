"""Running a predictor over cache rows in batches (progress bar), with an on-disk result that resumes."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np


_SCORES = ("logits", "probs", "abnormality")


def predict_rows(predictor, cache, rows: np.ndarray, *, batch_size: int = 64, progress: bool = True,
                 desc: str = "predict") -> dict[str, np.ndarray]:
    """{"logits", "probs", "abnormality"} for cache ``rows`` through ``predictor.forward_uint8``."""
    import torch
    from tqdm.auto import tqdm

    rows = np.asarray(rows, dtype=np.int64)
    c = len(predictor.label_names)
    parts: list[dict[str, np.ndarray]] = []
    with tqdm(total=len(rows), desc=desc, unit="img", disable=not progress) as bar:
        for s in range(0, len(rows), batch_size):
            chunk = np.sort(rows[s:s + batch_size])  # sorted reads are sequential on the memory map
            inv = np.argsort(np.argsort(rows[s:s + batch_size]))
            batch = torch.from_numpy(np.ascontiguousarray(cache.images[chunk])).unsqueeze(1)
            out = predictor.forward_uint8(batch)
            # scores only: per-film class maps ("cam", "embedding") would hold C x h x w floats per film in memory
            parts.append({k: np.asarray(v)[inv] for k, v in out.items() if k in _SCORES})
            bar.update(len(chunk))
    if not parts:
        return {"logits": np.zeros((0, c), np.float32), "probs": np.zeros((0, c), np.float32),
                "abnormality": np.zeros(0, np.float32)}
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def predictor_fingerprint(predictor, cache, rows: np.ndarray) -> str:
    """Hash of the model config (calibration excluded: it is re-applied to logits), the cache and the rows."""
    cfg = {k: v for k, v in predictor.config.items() if k not in ("calibration", "metrics")}
    h = hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode())
    h.update(str(getattr(cache, "manifest", {}).get("content_hash", getattr(cache, "path", ""))).encode())
    h.update(np.asarray(rows, np.int64).tobytes())
    if getattr(predictor, "path", None) is not None:
        for f in sorted(Path(predictor.path).rglob("*.safetensors")):
            st = f.stat()
            h.update(f"{f.relative_to(predictor.path)}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:32]


def cached_predict(predictor, cache, rows: np.ndarray, store: Path | None, **kw) -> dict[str, np.ndarray]:
    """:func:`predict_rows`, reusing ``store`` (an .npz) when it was written for the same predictor/cache/rows:
    re-running an interrupted or repeated evaluation does not predict again."""
    fp = predictor_fingerprint(predictor, cache, rows)
    if store is not None and store.is_file():
        with np.load(store) as z:
            if "fingerprint" in z and str(z["fingerprint"]) == fp:
                return {k: z[k] for k in ("logits", "probs", "abnormality")}
    out = predict_rows(predictor, cache, rows, **kw)
    if store is not None:
        store.parent.mkdir(parents=True, exist_ok=True)
        tmp = store.with_name(store.name + ".tmp.npz")
        np.savez(tmp, fingerprint=np.array(fp), **out)
        tmp.replace(store)
    return out
