"""Data layer: samples, datasets (MVTec AD, VisA, folders, paths, tensors), transforms, robust image I/O.

Names are imported on first use (PEP 562): `anomalens.data.class_names`, `.download` or `.image_io` load without
torch, so the CLI's checks and `anomalens report` answer without it.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_LAZY = {
    "UNKNOWN_LABEL": ".datasets", "DataLike": ".datasets", "FolderDataset": ".datasets", "ImageDataset": ".datasets",
    "ImagePaths": ".datasets", "MVTecAD": ".datasets", "TensorDataset": ".datasets", "VisA": ".datasets",
    "as_dataset": ".datasets", "collate": ".datasets",
    "load_image": ".image_io", "load_mask": ".image_io",
    "iter_batches": ".loader",
    "Sample": ".sample", "SampleRecord": ".sample",
    "CLIP_MEAN": ".transforms", "CLIP_STD": ".transforms", "IMAGENET_MEAN": ".transforms", "IMAGENET_STD": ".transforms",
    "ImageTransform": ".transforms", "resize_map": ".transforms",
}

__all__ = [
    "UNKNOWN_LABEL", "DataLike", "FolderDataset", "ImageDataset", "ImagePaths", "MVTecAD", "TensorDataset", "VisA",
    "as_dataset", "collate", "load_image", "load_mask", "iter_batches", "Sample", "SampleRecord",
    "CLIP_MEAN", "CLIP_STD", "IMAGENET_MEAN", "IMAGENET_STD", "ImageTransform", "resize_map",
]


def __getattr__(name: str) -> Any:
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'anomalens.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(target, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
    from .datasets import (UNKNOWN_LABEL, DataLike, FolderDataset, ImageDataset, ImagePaths, MVTecAD, TensorDataset,
                           VisA, as_dataset, collate)
    from .image_io import load_image, load_mask
    from .loader import iter_batches
    from .sample import Sample, SampleRecord
    from .transforms import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD, ImageTransform, resize_map
