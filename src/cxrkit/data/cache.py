"""The prepared cache: ``prepare`` writes it once (cache_write), ``open_cache`` maps it (cache_read).

Layout of a cache folder (see docs/data.md): ``manifest.json``, ``images.npy`` (N x S x S uint8),
``index.parquet`` (row i = image i), ``boxes.parquet`` (cache pixels), ``bad_files.csv``.
"""
from __future__ import annotations

from cxrkit.data.cache_read import CACHE_FORMAT, CACHE_FORMAT_VERSION, Cache, open_cache
from cxrkit.data.cache_write import prepare

__all__ = ["CACHE_FORMAT", "CACHE_FORMAT_VERSION", "Cache", "open_cache", "prepare"]
