"""Never replace a user's file: the one rule every writing command follows.

Each folder anomalens writes into gets a small hidden manifest, `.anomalens-outputs.json`, listing the names of the
files and folders that anomalens wrote there. A file that exists and is not listed is someone else's: it is never
replaced without `--force` (the refusal names the file). Folders that a command fills wholesale (overlays, a
generated data set) are ours when they are new, empty, or hold a manifest.

Two ways in, the same rule:

* `check_outputs(files=..., dirs=...)`: the CLI calls it before any work (and before torch is imported), so a
  command fails in well under a second instead of after minutes of fitting.
* `atomic_path` (anomalens.io) consults `guard_replace` / `record_written` for every file it writes while a CLI
  command runs (`guarded(force)`, entered by `cli.common.user_errors`): a write that the upfront check did not
  foresee is still refused, and everything written is recorded for the next run.

Library calls outside `guarded()` keep their own `overwrite=` arguments and write no manifest.

Nothing here imports torch, numpy or any other heavy module.
"""
from __future__ import annotations

import contextlib
import contextvars
import json
import os
import threading
from pathlib import Path
from typing import Iterable, Iterator, Optional, Union

from .errors import OutputExistsError

MANIFEST = ".anomalens-outputs.json"
PathLike = Union[str, os.PathLike]

_force: contextvars.ContextVar[Optional[bool]] = contextvars.ContextVar("anomalens_output_guard", default=None)
_lock = threading.Lock()
# Threads started inside a guarded command (overlay writers, prefetchers) do not inherit context variables:
# the process-wide fallback below is what they see.
_process_force: list[Optional[bool]] = [None]
#: outputs a command claimed but has not started writing: marked as ours at its first write (`start_writing`), so a
#: command that fails on its arguments leaves no folder or manifest behind
_pending: dict[str, list[Path]] = {"files": [], "dirs": []}


def _active() -> Optional[bool]:
    """None outside a guarded command, else its force flag."""
    v = _force.get()
    return _process_force[0] if v is None else v


def guard_active() -> bool:
    """True inside a CLI command (`guarded`): its outputs were checked and claimed up front."""
    return _active() is not None


@contextlib.contextmanager
def guarded(force: bool = False) -> Iterator[None]:
    """Within this block every anomalens write refuses to replace a file no anomalens run wrote (unless `force`),
    and records what it writes."""
    token = _force.set(bool(force))
    previous, pending = _process_force[0], {k: list(v) for k, v in _pending.items()}
    _process_force[0] = bool(force)
    _pending["files"].clear()
    _pending["dirs"].clear()
    try:
        yield
    finally:
        _force.reset(token)
        _process_force[0] = previous
        for k, v in pending.items():
            _pending[k][:] = v


ABOUT = "files written here by anomalens; others are never replaced without --force"


def _load(folder: Path) -> dict:
    try:
        data = json.loads((folder / MANIFEST).read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _read_manifest(folder: Path) -> set[str]:
    return set(_load(folder).get("written", []))


def _in_claimed_folder(p: Path, depth: int = 8) -> bool:
    """True when a folder above `p` was claimed whole by an anomalens command (overlays/, a generated data set)."""
    for folder in list(p.parents)[:depth]:
        if (folder / MANIFEST).is_file() and _load(folder).get("whole_folder"):
            return True
    return False


def written_by_us(path: PathLike) -> bool:
    """True when `path` is listed in its folder's manifest (an anomalens run wrote it), or lies in a folder that an
    anomalens command claimed whole."""
    p = Path(path)
    return p.name in _read_manifest(p.parent) or _in_claimed_folder(p)


def _dir_is_ours(folder: Path) -> bool:
    """A folder we may fill: absent, empty (hidden files aside), holding a manifest, or listed in its parent's."""
    if not folder.exists():
        return True
    if not folder.is_dir():
        return False
    if (folder / MANIFEST).is_file() or written_by_us(folder):  # an anomalens output folder
        return True
    return not any(not e.name.startswith(".") for e in folder.iterdir())


def _refusal(path: Path, what: str = "") -> OutputExistsError:
    # "recorded": an output of an anomalens older than the manifest is not known as one either (--force takes it)
    return OutputExistsError(f"{path} {what or 'already exists'} and no anomalens run recorded writing it; refusing to "
                             "replace it (choose another output, or pass --force to replace it)")


def check_outputs(files: Iterable[PathLike] = (), dirs: Iterable[PathLike] = (), force: Optional[bool] = None) -> None:
    """Refuse (OutputExistsError naming the first offender) when a command would replace something of the user's:

    * `files`: each is absent or was written by an anomalens run (its folder's manifest lists it);
    * `dirs`: folders the command fills with files whose names are not known in advance: each is absent, empty,
      or an anomalens output folder; also never an existing file.

    `force` defaults to the guard's (`guarded(force)`); True skips the check."""
    force = _active() if force is None else force
    if force:
        return
    for f in files:
        p = Path(f)
        if p.is_dir():
            raise OutputExistsError(f"{p} is a folder; the output here is a file (choose another path)")
        if p.exists() and not written_by_us(p):
            raise _refusal(p)
    for d in dirs:
        p = Path(d)
        if p.exists() and not p.is_dir():
            raise OutputExistsError(f"{p} is a file, not a folder; refusing to replace it (choose another output)")
        if not _dir_is_ours(p):
            first = sorted(e.name for e in p.iterdir() if not e.name.startswith("."))
            raise _refusal(p / first[0], "(in an output folder) already exists" if len(first) == 1 else
                           f"and {len(first) - 1} more entr{'y' if len(first) == 2 else 'ies'} of that output folder "
                           "already exist")


def guard_replace(path: PathLike) -> None:
    """Called before a file is written under a guarded command: refuse to replace a file no anomalens run wrote."""
    force = _active()
    if force is None:
        return
    start_writing()
    if force:
        return
    p = Path(path)
    if p.is_file() and not written_by_us(p):
        raise _refusal(p)


def record_written(paths: Iterable[PathLike], always: bool = False) -> None:
    """Add `paths` to their folders' manifests (only under a guarded command, unless `always`)."""
    if not always and _active() is None:
        return
    by_folder: dict[Path, set[str]] = {}
    for p in paths:
        p = Path(p)
        if p.name == MANIFEST or _in_claimed_folder(p):  # a claimed folder is ours whole: no list to grow
            continue
        by_folder.setdefault(p.parent, set()).add(p.name)
    with _lock:
        for folder, names in by_folder.items():
            data = _load(folder)
            old = set(data.get("written", []))
            if names <= old or not folder.is_dir():
                continue
            _write_manifest(folder, dict(data, about=ABOUT, written=sorted(old | names)))


def _write_manifest(folder: Path, data: dict) -> None:
    tmp = folder / f"{MANIFEST}.{os.getpid()}.{threading.get_ident()}.tmp"
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, folder / MANIFEST)


def claim_dir(folder: PathLike) -> Path:
    """Create `folder` (if needed) and mark it as an anomalens output folder (under a guarded command)."""
    p = Path(folder)
    p.mkdir(parents=True, exist_ok=True)
    if _active() is not None and not _load(p).get("whole_folder"):
        record_written([p])  # listed in its parent
        with _lock:
            data = _load(p)
            _write_manifest(p, dict(data, about=ABOUT, whole_folder=True, written=data.get("written", [])))
    return p


# ----------------------------------------------------------------------------------------------- saved models
#: a saved model folder (anomalens.detector writes these names; kept here so the check needs no torch)
MODEL_FORMAT, MODEL_CONFIG, MODEL_TENSORS = "anomalens-model", "config.json", "model.safetensors"


def is_model_dir(path: PathLike) -> bool:
    """True when `path` holds an anomalens model's config.json."""
    try:
        return json.loads((Path(path) / MODEL_CONFIG).read_text()).get("format") == MODEL_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def check_save_target(path: PathLike, overwrite: bool = False) -> None:
    """Refuse to save a model where files would be lost: a file, a non-empty folder that is not a model, or a model
    folder holding other files; an existing model only with `overwrite` (CLI: --force)."""
    path = Path(path)
    if not path.exists():
        return
    if not path.is_dir():
        raise OutputExistsError(f"{path} is a file, not a model folder; choose another output path")
    entries = sorted(p.name for p in path.iterdir() if p.name != MANIFEST)
    if not entries:
        return
    if not is_model_dir(path):
        raise OutputExistsError(f"{path} is a non-empty folder that is not an anomalens model; refusing to replace it "
                                "(choose a new or empty folder)")
    others = [e for e in entries if e not in (MODEL_CONFIG, MODEL_TENSORS)]
    if others:
        raise OutputExistsError(f"model folder {path} also holds other files ({', '.join(others[:3])}"
                                f"{', ...' if len(others) > 3 else ''}); refusing to replace it")
    if not overwrite:
        raise OutputExistsError(f"{path} already holds a saved model; pass overwrite=True (CLI: --force) to replace it")


def claim(files: Iterable[PathLike] = (), dirs: Iterable[PathLike] = ()) -> None:
    """`check_outputs(files, dirs)` now; mark them as this command's when it starts writing (its first anomalens
    write, or `start_writing()`), before any of them is written: a run interrupted half-way is still recognised as
    ours when resumed, and a command that fails on its arguments leaves nothing behind. Outside a command
    (`guarded`) the check only."""
    files, dirs = [Path(f) for f in files], [Path(d) for d in dirs]
    check_outputs(files, dirs)
    if _active() is not None:
        _pending["files"] += files
        _pending["dirs"] += dirs


def start_writing() -> None:
    """Mark the outputs claimed by the running command as ours (call before writing them by other means than
    anomalens.io, e.g. Pillow or an open() log); every guarded anomalens write calls it first."""
    if _active() is None or not (_pending["files"] or _pending["dirs"]):
        return
    files, dirs = list(_pending["files"]), list(_pending["dirs"])
    _pending["files"].clear()
    _pending["dirs"].clear()
    for f in files:
        f.parent.mkdir(parents=True, exist_ok=True)
    record_written(files)
    for d in dirs:
        claim_dir(d)
