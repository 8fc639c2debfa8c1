"""cxrkit's data layer: safe decoding, dataset readers with one sample contract, splits, the phantom set, the cache.

Public contract: :func:`read_image`, :class:`ImageError`, :func:`open_cache`, :func:`open_dataset`.
"""
from __future__ import annotations

from cxrkit.data.errors import CacheError, CxrError, DatasetError, ImageError, LeakageError
from cxrkit.data.labels import CHEXPERT_OBSERVATIONS, CHEXPERT_TO_NIH, NIH_FINDINGS, harmonise
from cxrkit.data.record import Sample, make_sample


def __getattr__(name):
    # Lazy so `import cxrkit.data` stays light; each name lives in one module.
    lazy = {
        "read_image": "cxrkit.data.decode",
        "decode_bytes": "cxrkit.data.decode",
        "DecodeLimits": "cxrkit.data.decode",
        "open_cache": "cxrkit.data.cache",
        "prepare": "cxrkit.data.cache",
        "Cache": "cxrkit.data.cache",
        "CacheLoader": "cxrkit.data.loader",
        "open_dataset": "cxrkit.data.datasets",
        "NIHDataset": "cxrkit.data.datasets",
        "CheXpertDataset": "cxrkit.data.datasets",
        "CSVDataset": "cxrkit.data.datasets",
        "DicomFolderDataset": "cxrkit.data.datasets",
        "patient_split": "cxrkit.data.splits",
        "check_leakage": "cxrkit.data.splits",
    }
    if name in lazy:
        import importlib

        return getattr(importlib.import_module(lazy[name]), name)
    raise AttributeError(name)


__all__ = [
    "CacheError", "CxrError", "DatasetError", "ImageError", "LeakageError", "CHEXPERT_OBSERVATIONS",
    "CHEXPERT_TO_NIH", "NIH_FINDINGS", "harmonise", "Sample", "make_sample", "read_image", "decode_bytes",
    "DecodeLimits", "open_cache", "prepare", "Cache", "CacheLoader", "open_dataset", "NIHDataset",
    "CheXpertDataset", "CSVDataset", "DicomFolderDataset", "patient_split", "check_leakage",
]
