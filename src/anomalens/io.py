"""Atomic file and directory writes: a crash never leaves a half-written model or report behind."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling path; on success it is renamed onto `path` (file or directory).

    Under a guarded CLI command (`anomalens.outputs.guarded`) a file no anomalens run wrote is never replaced
    (OutputExistsError naming it, before anything is written) and every file written is recorded."""
    from .outputs import guard_replace, record_written

    path = Path(path)
    guard_replace(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    target = tmp / "payload"
    try:
        yield target
        _default_permissions(target)
        if path.is_dir() and target.is_dir():
            backup = tmp / "old"
            os.replace(path, backup)  # swap: both renames stay within one filesystem
            try:
                os.replace(target, path)
            except BaseException:
                os.replace(backup, path)
                raise
        else:
            if path.is_dir():
                raise IsADirectoryError(f"cannot overwrite directory {path} with a file")
            os.replace(target, path)
            record_written([path])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _umask() -> int:
    """The process umask, read without changing it where /proc allows."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _default_permissions(target: Path) -> None:
    """Give a freshly written file or tree the modes a plain `open()` / `mkdir` would (0666 / 0777 minus the umask):
    temporary files (and safetensors) are created 0600, which would otherwise leak into the final output."""
    if not target.exists():
        return
    mask = _umask()
    paths = [target] + (sorted(target.rglob("*")) if target.is_dir() else [])
    for p in paths:
        if not p.is_symlink():
            os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~mask)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write `obj` as pretty JSON atomically; returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write text atomically; returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


_ST_DTYPES = {"F32": "float32", "F16": "float16", "F64": "float64", "I64": "int64", "I32": "int32",
              "U8": "uint8", "BOOL": "bool", "BF16": None}


def load_safetensors_mmap(path: str | os.PathLike) -> dict:
    """Memory-map every tensor of a .safetensors file (zero-copy, read-only pages): a large bank is not read into RAM."""
    import numpy as np
    import torch

    path = Path(path)
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) != 8:
            raise ValueError(f"{path} is not a safetensors file (too short)")
        n = int.from_bytes(head, "little")
        header = json.loads(fh.read(n))
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = _ST_DTYPES.get(info["dtype"])
        start, end = info["data_offsets"]
        shape = tuple(info["shape"])
        if dtype is None:  # bf16: numpy has no dtype, read through safetensors instead
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                out[name] = f.get_tensor(name)
            continue
        if end == start:
            out[name] = torch.zeros(shape, dtype=getattr(torch, dtype))
            continue
        arr = np.memmap(path, dtype=dtype, mode="r", offset=base + start, shape=shape)
        with warnings_suppressed():
            out[name] = torch.from_numpy(arr)  # shares the read-only mapping
    return out


@contextlib.contextmanager
def warnings_suppressed():
    """Silence torch's 'non-writable array' warning for read-only memory maps (we never write to them)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        yield
