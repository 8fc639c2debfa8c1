"""The documented errors of the data layer."""
from __future__ import annotations

import os


class CxrError(Exception):
    """Base class for every error cxrkit raises on purpose (bad input, bad configuration)."""


class ImageError(CxrError):
    """An image file was refused: unreadable, corrupt, truncated, too large, or of a refused kind.

    The message always names the file and the reason; ``.path`` and ``.reason`` hold them too.
    """

    def __init__(self, path: os.PathLike | str | None, reason: str):
        self.path = None if path is None else str(path)
        self.reason = reason
        where = self.path if self.path is not None else "<bytes>"
        super().__init__(f"{where}: {reason}")


class DatasetError(CxrError):
    """A dataset folder or label table is not in a format cxrkit can read (says what to fix)."""


class CacheError(CxrError):
    """A prepared cache is missing, incomplete, or does not match what was asked for."""


class LeakageError(CxrError):
    """A patient appears in more than one split."""
