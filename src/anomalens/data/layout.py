"""Dataset layouts read without torch: the categories of an MVTec AD root and the objects of a VisA split file.

`MVTecAD.categories` / `VisA.categories` are these; the benchmark lists categories with them so that a fully
resumed run never imports torch.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Union

from ..errors import DataError

PathLike = Union[str, os.PathLike]


def require_dir(path: Path, what: str) -> Path:
    """`path` if it is an existing folder, else a DataError naming it and `what` it should be."""
    if not path.exists():
        raise DataError(f"{what} not found: {path}")
    if not path.is_dir():
        raise DataError(f"{what} is not a directory: {path}")
    return path


def mvtec_categories(root: PathLike) -> list[str]:
    """Category folders under `root` (those with a train/ or test/ folder)."""
    root = require_dir(Path(root), "dataset root")
    cats = sorted(d.name for d in root.iterdir() if d.is_dir() and ((d / "train").is_dir() or (d / "test").is_dir()))
    if not cats:
        raise DataError(f"no MVTec-style categories (folders with train/ or test/) in {root}")
    return cats


def read_visa_csv(root: Path, split_csv: PathLike) -> list[dict]:
    """The rows of a VisA split file (columns object, split, label, image, mask)."""
    path = Path(split_csv) if Path(split_csv).is_absolute() else Path(root) / split_csv
    if not path.is_file():
        raise DataError(f"VisA split file not found: {path} (expected split_csv/1cls.csv under the VisA root)")
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    need = {"object", "split", "label", "image", "mask"}
    if not rows or not need.issubset(rows[0]):
        raise DataError(f"{path} must have the columns {sorted(need)}")
    return rows


def visa_categories(root: PathLike, split_csv: PathLike = "split_csv/1cls.csv") -> list[str]:
    """Objects listed in the split file."""
    return sorted({r["object"] for r in read_visa_csv(Path(root), split_csv)})
