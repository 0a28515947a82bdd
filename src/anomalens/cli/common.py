"""What every command shares: one-line errors, consoles, `--set key=value` parsing, tables, overlays.

Nothing here imports torch at module level: `anomalens --help` must start in well under a second.
"""
from __future__ import annotations

import ast
import functools
import math
from pathlib import Path
from typing import TYPE_CHECKING, List, Optional

import typer
from rich.console import Console

from ..errors import AnomalensError

if TYPE_CHECKING:  # pragma: no cover
    from rich.table import Table

console = Console()
err_console = Console(stderr=True)

SHORT = {"image_auroc": "I-AUROC", "image_ap": "I-AP", "image_f1max": "I-F1max", "pixel_auroc": "P-AUROC",
         "pixel_ap": "P-AP", "pixel_f1max": "P-F1max", "aupro": "AUPRO"}
DEVICE_HELP = "auto (CUDA when present, else CPU), cpu, cuda or cuda:N"
SET_HELP = "model setting key=value (repeatable; see `anomalens models`)"
FORCE_HELP = "replace output files that anomalens did not write (without it such a file is never replaced)"
RANDOM_INIT_TAG = " [yellow]\\[random-init backbone][/yellow]"


def user_errors(fn):
    """Turn user errors into one line on stderr and exit code 2 (no traceback); run the command under the output
    guard (`anomalens.outputs.guarded`): a file no anomalens run wrote is never replaced unless it has `--force`."""
    from ..outputs import guarded

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            with guarded(force=bool(kwargs.get("force", False))):
                return fn(*args, **kwargs)
        except (AnomalensError, ValueError, FileNotFoundError, NotADirectoryError, PermissionError) as exc:
            err_console.print(f"[red]error:[/red] {esc(exc)}", highlight=False, soft_wrap=True)
            raise typer.Exit(2)

    return wrapper


def esc(value) -> str:
    """`str(value)` as literal text for rich: user paths, settings and messages are never read as markup
    ("pip install 'anomalens[generation]'", a file named "[1].png" stay intact)."""
    from rich.markup import escape

    return escape(str(value))


def say(text: str, **kw) -> None:
    """Print literal text (no markup) on stdout, as the commands' progress lines."""
    console.print(esc(text), highlight=False, soft_wrap=True, **kw)


def warn(message: str) -> None:
    """One yellow warning line on stderr (the message is literal text, not markup)."""
    err_console.print(f"[yellow]warning:[/yellow] {esc(message)}", highlight=False, soft_wrap=True)


def calibrate_with_warnings(det, calib, fpr: float, context: str = "") -> None:
    """`det.calibrate(calib, fpr)` with its warnings (e.g. too few images for the rate) as one console line each,
    prefixed by `context` (the category or folder they concern)."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        det.calibrate(calib, fpr=fpr)
    for w in caught:
        warn(f"{context}: {w.message}" if context else str(w.message))


def parse_settings(items: Optional[List[str]]) -> dict:
    """`key=value` pairs; values parsed as Python literals (numbers, None, lists), else kept as strings."""
    out = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"setting {item!r} must look like key=value")
        key, raw = item.split("=", 1)
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        out[key.strip().replace("-", "_")] = value
    return out


def metrics_table(title: str, rows: dict[str, dict], random_init: bool = False) -> "Table":
    """A rich table of per-category metrics (+ mean row)."""
    from rich.table import Table

    from ..metrics import ALL_KEYS

    keys = [k for k in ALL_KEYS if any(k in r for r in rows.values())]
    t = Table(title=esc(title) + (" [yellow](random-init backbone)[/yellow]" if random_init else ""))
    t.add_column("category")
    for k in keys:
        t.add_column(SHORT.get(k, k), justify="right")
    for cat, r in rows.items():
        t.add_row(esc(cat), *[("nan" if math.isnan(r.get(k, float("nan"))) else f"{r[k]:.3f}") for k in keys])
    return t


def write_overlays(pred, transform=None, out_dir: Path = Path("overlays"), limit: int = 0, root=None, scale=None):
    """`anomalens.viz.write_overlays` (kept here for callers of the CLI helpers)."""
    from ..viz.files import write_overlays as _write

    return _write(pred, transform, out_dir, limit=limit, root=root, scale=scale)


def split_holdout(ds, holdout: float, seed: int = 0):
    """(train, calibration) split of a normal dataset; calibration is None when nothing is held out."""
    import numpy as np

    n = len(ds)
    n_hold = int(round(n * holdout))
    if holdout <= 0 or n_hold < 2 or n - n_hold < 1:  # one image cannot calibrate a threshold
        return ds, None
    perm = np.random.default_rng(seed).permutation(n)
    return ds.subset(sorted(perm[n_hold:].tolist())), ds.subset(sorted(perm[:n_hold].tolist()))


def open_dataset(root: Path, dataset: str, category: Optional[str], split: str):
    """A dataset by kind: mvtec / visa (with --category) or a plain folder."""
    from ..data import FolderDataset, MVTecAD, VisA

    if dataset in ("mvtec", "visa"):
        if category is None:
            raise ValueError(f"--category is required for --dataset {dataset}")
        return (MVTecAD if dataset == "mvtec" else VisA)(root, category, split)
    if dataset == "folder":
        return FolderDataset(root)
    raise ValueError(f"unknown dataset kind {dataset!r}: use mvtec, visa or folder")


def create_with_fallback(name: str, settings: dict):
    """Build a model; if its pretrained weights cannot be had, fall back to random init and say so."""
    import anomalens

    try:
        return anomalens.create(name, **settings).setup()  # resolves weights before any work starts
    except anomalens.WeightsError as exc:
        warn(f"{exc}; continuing with a random-init backbone")
        return anomalens.create(name, **dict(settings, weights=None))
