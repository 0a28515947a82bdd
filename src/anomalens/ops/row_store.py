"""An append-only on-disk matrix: rows written and read back with plain file I/O (page cache, not process memory).

Used to stream patch features while a backbone runs, so peak RSS never holds the full feature bank.
"""
from __future__ import annotations

import os
from pathlib import Path
import numpy as np


class RowStore:
    """Append (n, dim) arrays of one dtype; gather rows by index afterwards."""

    def __init__(self, path: str | os.PathLike, dim: int, dtype=np.float32):
        self.path = Path(path)
        self.dim = int(dim)
        self.dtype = np.dtype(dtype)
        self._fh = open(self.path, "wb")
        self.n_rows = 0

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

    def gather(self, indices: np.ndarray) -> np.ndarray:
        """Rows at `indices` (in that order), read with pread in ascending runs.

        No memory map: a mapped file's read-ahead pages would count in the process's RSS.
        """
        self.finish()
        indices = np.asarray(indices, dtype=np.int64)
        if indices.size and (indices.min() < 0 or indices.max() >= self.n_rows):
            raise IndexError(f"row index out of range for {self.n_rows} rows")
        order = np.argsort(indices, kind="stable")
        srt = indices[order]
        out_sorted = np.empty((len(indices), self.dim), dtype=self.dtype)
        row_bytes = self.dim * self.dtype.itemsize
        breaks = np.flatnonzero(np.diff(srt) != 1) + 1
        fd = os.open(self.path, os.O_RDONLY)
        try:
            for run in np.split(np.arange(len(srt)), breaks):
                if not len(run):
                    continue
                first, n = int(srt[run[0]]), len(run)
                buf = os.pread(fd, n * row_bytes, first * row_bytes)
                out_sorted[run[0] : run[0] + n] = np.frombuffer(buf, dtype=self.dtype).reshape(n, self.dim)
        finally:
            os.close(fd)
        out = np.empty_like(out_sorted)
        out[order] = out_sorted
        return out

    def close(self) -> None:
        """Release the file handle."""
        self.finish()
