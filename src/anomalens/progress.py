"""Progress bars for long loops (rich); silenced with ANOMALENS_PROGRESS=0 or `set_progress(False)`."""
from __future__ import annotations

import os
import sys
from typing import Iterable, Iterator, Optional, TypeVar

T = TypeVar("T")
_enabled: Optional[bool] = None


def set_progress(enabled: bool) -> None:
    """Turn progress bars on or off for this process."""
    global _enabled
    _enabled = enabled


def progress_enabled() -> bool:
    """Whether bars are shown: explicit setting, else ANOMALENS_PROGRESS (1 = on, 0 = off), else only when stderr is
    a terminal (piped or logged output gets no progress lines)."""
    if _enabled is not None:
        return _enabled
    env = os.environ.get("ANOMALENS_PROGRESS")
    if env is not None:
        return env.strip().lower() not in ("0", "false", "no", "off")
    return sys.stderr.isatty()


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
