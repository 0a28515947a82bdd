"""An append-only on-disk matrix: rows written with plain file I/O (page cache, not process memory), read back by memmap.

Used to stream patch features while a backbone runs, so peak RSS never holds the full feature bank.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import numpy as np


class RowStore:
    """Append (n, dim) arrays of one dtype; gather rows by index afterwards."""

    def __init__(self, path: str | os.PathLike, dim: int, dtype=np.float32):
        self.path = Path(path)
        self.dim = int(dim)
        self.dtype = np.dtype(dtype)
        self._fh = open(self.path, "wb")
        self.n_rows = 0
        self._map: Optional[np.memmap] = None

    def append(self, rows: np.ndarray) -> None:
        """Write rows at the end of the file (converted to the store's dtype)."""
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
        if rows.ndim != 2 or rows.shape[1] != self.dim:
            raise ValueError(f"expected rows of width {self.dim}, got shape {rows.shape}")
        self._fh.write(rows.tobytes())
        self.n_rows += len(rows)

    def finish(self) -> "RowStore":
        """Close the writer; rows can now be read."""
        if not self._fh.closed:
            self._fh.close()
        return self

    def _mapped(self) -> np.memmap:
        self.finish()
        if self._map is None:
            self._map = np.memmap(self.path, dtype=self.dtype, mode="r", shape=(self.n_rows, self.dim))
        return self._map

    def gather(self, indices: np.ndarray) -> np.ndarray:
        """Rows at `indices` (in that order), reading the file in ascending order and touching only those pages."""
        indices = np.asarray(indices, dtype=np.int64)
        order = np.argsort(indices, kind="stable")
        out = np.empty((len(indices), self.dim), dtype=self.dtype)
        out[order] = self._mapped()[indices[order]]
        return out

    def close(self) -> None:
        """Release the file handle and the mapping."""
        self.finish()
        self._map = None
