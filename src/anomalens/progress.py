"""Progress bars for long loops (rich); silenced with ANOMALENS_PROGRESS=0 or `set_progress(False)`."""
from __future__ import annotations

import os
from typing import Iterable, Iterator, Optional, TypeVar

T = TypeVar("T")
_enabled: Optional[bool] = None


def set_progress(enabled: bool) -> None:
    """Turn progress bars on or off for this process."""
    global _enabled
    _enabled = enabled


def progress_enabled() -> bool:
    """Whether bars are shown (explicit setting, else the ANOMALENS_PROGRESS variable, default on)."""
    if _enabled is not None:
        return _enabled
    return os.environ.get("ANOMALENS_PROGRESS", "1") not in ("0", "false", "no")


def track(iterable: Iterable[T], description: str, total: Optional[float] = None) -> Iterator[T]:
    """Iterate with a rich progress bar on stderr when enabled."""
    if not progress_enabled():
        yield from iterable
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    cols = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*cols, console=Console(stderr=True), transient=True) as bar:
        yield from bar.track(iterable, total=total, description=description)
