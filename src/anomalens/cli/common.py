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


# ----------------------------------------------------------------------------------------------- checks before torch
# Every command validates its arguments with these first: an argument, --set, path or format error answers in a
# fraction of a second, before torch (seconds to import) is loaded.
_DEVICE_TYPES = ("cpu", "cuda", "mps", "xpu", "hpu", "xla", "meta")


def check_device(device: str) -> None:
    """The device string's form (CUDA's presence is checked later, by torch)."""
    import re

    if not re.fullmatch(rf"auto|(?:{'|'.join(_DEVICE_TYPES)})(?::\d+)?", str(device).strip().lower()):
        raise ValueError(f"unknown device {device!r}: use 'auto', 'cpu', 'cuda' or 'cuda:N'")


def check_choice(value: str, choices, flag: str) -> None:
    if value not in choices:
        raise ValueError(f"{flag} must be one of {', '.join(choices)}, got {value!r}")


def require_path(path, what: str, folder: bool = False) -> None:
    """FileNotFoundError naming `path` (and what it should have been) when it is missing."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{what} not found: {p}")
    if folder and not p.is_dir():
        raise NotADirectoryError(f"{what} is not a folder: {p}")


def require_model_dir(path) -> None:
    """A saved model's folder (config.json of an anomalens model + model.safetensors), read as JSON only."""
    from ..outputs import MODEL_CONFIG, MODEL_TENSORS, is_model_dir

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"no saved model at {p}")
    if not (p / MODEL_CONFIG).is_file() or not (p / MODEL_TENSORS).is_file():
        raise ValueError(f"{p} is not an anomalens model directory (needs {MODEL_CONFIG} and {MODEL_TENSORS})")
    if not is_model_dir(p):
        raise ValueError(f"{p / MODEL_CONFIG} is not an anomalens model config")


def require_inputs(items, what: str = "image") -> None:
    """Each file / folder argument exists (glob patterns are expanded later, where an empty match is an error)."""
    for item in items:
        s = str(item)
        if not any(ch in s for ch in "*?[") and not Path(s).exists():
            raise FileNotFoundError(f"{what} path not found: {s}")


def check_model_settings(model: str, settings: dict) -> None:
    """A known model name and setting names that model has, from the source catalogue (no torch). Values are
    checked by the model itself."""
    from ..catalogue import model_catalogue

    entries = {e.name: e for e in model_catalogue()}
    entry = entries.get(model.lower().replace("-", "_"))
    if entry is None:
        raise ValueError(f"unknown model {model!r}; available: {', '.join(sorted(entries))}")
    bad = sorted(set(settings) - set(entry.settings) - {"device"})
    if "pretrained" in bad and "weights" in entry.settings:
        raise ValueError(f"{entry.name}: the weights setting is spelled weights= (None = seeded random init, a tag, "
                         "or a local file); CLI: --set weights=...")
    if bad:
        raise ValueError(f"{entry.name} has no setting(s) {bad}; valid: {sorted(entry.settings)}")
    import numbers
    import typing

    from ..errors import SettingError
    from ..settings import _in_range, conforms, describe

    names = {k: getattr(typing, k) for k in ("Any", "Optional", "Union", "Literal", "Sequence", "Tuple", "List")}
    for key, value in settings.items():
        try:  # the annotation as written; one this check cannot read is left to the model's own check
            tp = eval(entry.annotations[key], {"__builtins__": {}, "int": int, "float": float, "str": str,  # noqa: S307
                                              "bool": bool, "list": list, "tuple": tuple, "None": None, **names})
        except Exception:  # noqa: BLE001
            tp = None
        if tp is not None and not conforms(value, tp):
            raise SettingError(f"{entry.name}: setting {key}={value!r} must be {describe(tp)} (got {type(value).__name__})")
        spec = entry.ranges.get(key)
        if spec is not None and isinstance(value, numbers.Real) and not isinstance(value, bool) and not _in_range(value, spec):
            raise SettingError(f"{entry.name}: setting {key}={value!r} is out of range; expected a value in {spec}")
