"""Datasets: MVTec AD, VisA, a generic folder layout, plain image paths and tensor batches.

Every dataset is a sequence of `Sample`s built from `SampleRecord`s; construction validates the layout
(missing root, empty folder, mask without image) and loading validates the files (corrupt image,
image/mask size mismatch), each error naming the offending path.
"""
from __future__ import annotations

import glob as _glob
import os
import warnings
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence, Union

import numpy as np
import torch

from ..errors import DataError
from .image_io import image_size, is_image_file, load_image, load_mask
from .layout import require_dir
from .sample import Sample, SampleRecord
from .transforms import ImageTransform

PathLike = Union[str, os.PathLike]
UNKNOWN_LABEL = -1


def _list_images(folder: Path, recursive: bool = False) -> list[Path]:
    it = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in it if p.is_file() and is_image_file(p) and not p.name.startswith("."))


class ImageDataset(Sequence[Sample]):
    """A list of `SampleRecord`s plus the transform applied when a sample is loaded."""

    name = "images"

    def __init__(self, records: Sequence[SampleRecord], transform: Optional[ImageTransform] = None, source: str = ""):
        if len(records) == 0:
            raise DataError(f"no images found in {source or 'the given input'}")
        self.records = list(records)
        self.transform = transform
        self.source = source

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return self.subset(range(*index.indices(len(self))))
        return self.load(self.records[index])

    def __iter__(self) -> Iterator[Sample]:
        for rec in self.records:
            yield self.load(rec)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)} images from {self.source!r})"

    def with_transform(self, transform: Optional[ImageTransform]) -> "ImageDataset":
        """A shallow copy sharing the records, loading with `transform`."""
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        new.transform = transform
        return new

    def subset(self, indices: Iterable[int]) -> "ImageDataset":
        """A copy holding only the records at `indices` (e.g. a few-shot draw)."""
        new = self.with_transform(self.transform)
        new.records = [self.records[i] for i in indices]
        if not new.records:
            raise DataError(f"empty subset of {self.source}")
        return new

    def sample(self, k: int, seed: int = 0) -> "ImageDataset":
        """A seeded uniform draw of k samples without replacement (few-shot fitting), kept in dataset order."""
        if not 1 <= k <= len(self):
            raise DataError(f"cannot draw {k} of {len(self)} images from {self.source}")
        idx = np.random.default_rng(seed).choice(len(self), size=k, replace=False)
        return self.subset(sorted(int(i) for i in idx))

    @property
    def labels(self) -> np.ndarray:
        """(N,) int labels: 1 anomalous, 0 normal, -1 unknown."""
        return np.array([r.label for r in self.records], dtype=np.int64)

    @property
    def paths(self) -> list[str]:
        """Image paths in dataset order."""
        return [r.path for r in self.records]

    @property
    def has_labels(self) -> bool:
        """True when every sample has a known label."""
        return bool((self.labels >= 0).all())

    @property
    def has_masks(self) -> bool:
        """True when every anomalous sample has a mask (normal samples get an all-zero mask)."""
        return self.has_labels and all(r.mask_path is not None for r in self.records if r.label == 1)

    def load(self, rec: SampleRecord) -> Sample:
        """Read one record from disk and apply the transform."""
        img = load_image(rec.path)
        mask_arr: Optional[np.ndarray] = None
        if rec.mask_path is not None:
            mask_arr = load_mask(rec.mask_path)
            if mask_arr.shape != (img.height, img.width):
                raise DataError(
                    f"mask {rec.mask_path} is {mask_arr.shape[1]}x{mask_arr.shape[0]} but image {rec.path} "
                    f"is {img.width}x{img.height}"
                )
        elif rec.label == 0:
            mask_arr = np.zeros((img.height, img.width), dtype=bool)
        t = self.transform or ImageTransform(resize=None, crop=None, mean=(0, 0, 0), std=(1, 1, 1))
        image = t.image(img)
        mask = t.mask(mask_arr) if mask_arr is not None else None
        return Sample(image, mask, rec.label, rec.path, rec.category, rec.defect_type, (img.height, img.width))

    def original_size(self, index: int) -> tuple[int, int]:
        """(H, W) of image `index` as stored, read from the file header only."""
        w, h = image_size(self.records[index].path)
        return h, w


class MVTecAD(ImageDataset):
    """MVTec AD layout: <root>/<category>/{train/good, test/<defect>, ground_truth/<defect>/<stem>_mask.png}."""

    name = "mvtec"

    def __init__(self, root: PathLike, category: str, split: str = "test", transform: Optional[ImageTransform] = None):
        if split not in ("train", "test"):
            raise DataError(f"split must be 'train' or 'test', got {split!r}")
        root = require_dir(Path(root), "dataset root")
        cat_dir = require_dir(root / category, f"category {category!r}")
        split_dir = require_dir(cat_dir / split, f"{split} folder of {category!r}")
        self.root, self.category, self.split = root, category, split
        records: list[SampleRecord] = []
        defects = sorted(d for d in split_dir.iterdir() if d.is_dir())
        if not defects:
            raise DataError(f"no defect-type folders (e.g. 'good') in {split_dir}")
        gt_dir = cat_dir / "ground_truth"
        for ddir in defects:
            images = _list_images(ddir)
            label = 0 if ddir.name == "good" else 1
            by_stem = {p.stem: p for p in images}
            masks: dict[str, Path] = {}
            if label == 1 and (gt_dir / ddir.name).is_dir():
                for m in _list_images(gt_dir / ddir.name):
                    stem = m.stem[: -len("_mask")] if m.stem.endswith("_mask") else m.stem
                    if stem not in by_stem:
                        raise DataError(f"mask without image: {m} has no image {ddir / stem}.* ")
                    masks[stem] = m
            for p in images:
                mpath = masks.get(p.stem)
                if label == 1 and mpath is None:
                    warnings.warn(f"no ground-truth mask for anomalous image {p}; pixel metrics will be skipped")
                records.append(SampleRecord(str(p), str(mpath) if mpath else None, label, category, ddir.name))
        if split == "train" and any(r.label for r in records):
            raise DataError(f"train split of {cat_dir} holds non-'good' folders; MVTec AD trains on normal images only")
        super().__init__(records, transform, source=str(split_dir))

    @staticmethod
    def categories(root: PathLike) -> list[str]:
        """Category folders under `root` (those with a train/ or test/ folder)."""
        from .layout import mvtec_categories

        return mvtec_categories(root)


class VisA(ImageDataset):
    """VisA: <root>/split_csv/1cls.csv (object, split, label, image, mask) over <root>/<object>/Data/{Images,Masks}."""

    name = "visa"

    def __init__(
        self,
        root: PathLike,
        category: str,
        split: str = "test",
        transform: Optional[ImageTransform] = None,
        split_csv: PathLike = "split_csv/1cls.csv",
    ):
        if split not in ("train", "test"):
            raise DataError(f"split must be 'train' or 'test', got {split!r}")
        root = require_dir(Path(root), "dataset root")
        rows = self._read_csv(root, split_csv)
        self.root, self.category, self.split = root, category, split
        if category not in {r["object"] for r in rows}:
            raise DataError(f"category {category!r} not in {root / split_csv}")
        records = []
        for r in rows:
            if r["object"] != category or r["split"] != split:
                continue
            label = 0 if r["label"] == "normal" else 1
            img = root / r["image"]
            if not img.is_file():
                raise DataError(f"image listed in {split_csv} not found: {img}")
            mask = root / r["mask"] if r.get("mask") else None
            if mask is not None and not mask.is_file():
                raise DataError(f"mask listed in {split_csv} not found: {mask}")
            defect = "good" if label == 0 else "anomaly"
            records.append(SampleRecord(str(img), str(mask) if mask else None, label, category, defect))
        super().__init__(records, transform, source=f"{root / split_csv} [{category}/{split}]")

    @staticmethod
    def _read_csv(root: Path, split_csv: PathLike) -> list[dict]:
        from .layout import read_visa_csv

        return read_visa_csv(root, split_csv)

    @staticmethod
    def categories(root: PathLike, split_csv: PathLike = "split_csv/1cls.csv") -> list[str]:
        """Objects listed in the split file."""
        return sorted({r["object"] for r in VisA._read_csv(Path(root), split_csv)})


class FolderDataset(ImageDataset):
    """Generic layout: a folder of normal images, an optional folder of anomalous ones and of masks (matched by stem)."""

    name = "folder"

    def __init__(
        self,
        normal_dir: Optional[PathLike] = None,
        abnormal_dir: Optional[PathLike] = None,
        mask_dir: Optional[PathLike] = None,
        transform: Optional[ImageTransform] = None,
        category: str = "",
    ):
        if normal_dir is None and abnormal_dir is None:
            raise DataError("FolderDataset needs normal_dir, abnormal_dir or both")
        records: list[SampleRecord] = []
        sources = []
        if normal_dir is not None:
            nd = require_dir(Path(normal_dir), "normal image folder")
            normals = _list_images(nd)
            if not normals:
                raise DataError(f"no images found in normal image folder {nd}")
            records += [SampleRecord(str(p), None, 0, category, "good") for p in normals]
            sources.append(str(nd))
        if abnormal_dir is not None:
            ad = require_dir(Path(abnormal_dir), "anomalous image folder")
            abnormals = _list_images(ad)
            if not abnormals:
                raise DataError(f"no images found in anomalous image folder {ad}")
            masks = self._match_masks(abnormals, mask_dir)
            records += [SampleRecord(str(p), masks.get(p.stem), 1, category, "anomaly") for p in abnormals]
            sources.append(str(ad))
        elif mask_dir is not None:
            raise DataError(f"mask folder {mask_dir} given without an anomalous image folder")
        super().__init__(records, transform, source=" + ".join(sources))

    @staticmethod
    def _match_masks(images: list[Path], mask_dir: Optional[PathLike]) -> dict[str, str]:
        if mask_dir is None:
            return {}
        md = require_dir(Path(mask_dir), "mask folder")
        stems = {p.stem for p in images}
        out: dict[str, str] = {}
        for m in _list_images(md):
            stem = m.stem
            for suffix in ("_mask", "_label", "_gt"):
                if stem not in stems and stem.endswith(suffix):
                    stem = stem[: -len(suffix)]
            if stem not in stems:
                raise DataError(f"mask without image: {m} matches no image in the anomalous folder")
            out[stem] = str(m)
        return out


class ImagePaths(ImageDataset):
    """Plain images to predict on: a folder (recursive), a glob pattern, a file, or a list of these."""

    name = "paths"

    def __init__(self, paths: Union[PathLike, Sequence[PathLike]], transform: Optional[ImageTransform] = None):
        items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
        files: list[Path] = []
        for item in items:
            s = str(item)
            p = Path(s)
            if any(ch in s for ch in "*?[") and not p.exists():
                hits = sorted(Path(h) for h in _glob.glob(s, recursive=True) if is_image_file(h))
                if not hits:
                    raise DataError(f"no images match the pattern {s}")
                files += hits
            elif p.is_dir():
                hits = _list_images(p, recursive=True)
                if not hits:
                    raise DataError(f"no images found in {p}")
                files += hits
            elif p.exists():
                files.append(p)
            else:
                raise DataError(f"path not found: {p}")
        records = [SampleRecord(str(p), None, UNKNOWN_LABEL) for p in files]
        super().__init__(records, transform, source=", ".join(str(i) for i in items[:3]) + (" ..." if len(items) > 3 else ""))


class TensorDataset(ImageDataset):
    """An in-memory (N, 3, H, W) float batch in [0, 1]; the model's transform still resizes and normalises it."""

    name = "tensor"

    def __init__(self, images: torch.Tensor, labels: Optional[Sequence[int]] = None, transform: Optional[ImageTransform] = None):
        if images.ndim == 3:
            images = images.unsqueeze(0)
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise DataError(f"image batch must be (N, 3, H, W), got shape {tuple(images.shape)}")
        if not torch.is_floating_point(images):
            images = images.float() / 255.0
        self.images = images
        labs = list(labels) if labels is not None else [UNKNOWN_LABEL] * len(images)
        records = [SampleRecord(f"<tensor:{i}>", None, int(labs[i])) for i in range(len(images))]
        super().__init__(records, transform, source=f"tensor batch of {len(images)}")

    def load(self, rec: SampleRecord) -> Sample:
        i = int(rec.path[len("<tensor:") : -1])
        t = self.transform or ImageTransform(resize=None, crop=None, mean=(0, 0, 0), std=(1, 1, 1))
        return Sample(t.image(self.images[i]), None, rec.label, rec.path, size=tuple(int(v) for v in self.images[i].shape[-2:]))

    def original_size(self, index: int) -> tuple[int, int]:
        i = int(self.records[index].path[len("<tensor:") : -1])
        return tuple(int(v) for v in self.images[i].shape[-2:])  # type: ignore[return-value]


DataLike = Union[ImageDataset, PathLike, Sequence[PathLike], torch.Tensor]


def as_dataset(data: DataLike, transform: Optional[ImageTransform] = None) -> ImageDataset:
    """Coerce anything a detector accepts (dataset, folder, glob, path list, tensor batch) into a dataset."""
    if isinstance(data, ImageDataset):
        return data.with_transform(transform) if transform is not None else data
    if isinstance(data, torch.Tensor):
        return TensorDataset(data, transform=transform)
    if isinstance(data, np.ndarray):
        return TensorDataset(torch.from_numpy(data), transform=transform)
    if isinstance(data, (str, os.PathLike)) or (isinstance(data, (list, tuple)) and data and all(isinstance(d, (str, os.PathLike)) for d in data)):
        return ImagePaths(data, transform=transform)  # type: ignore[arg-type]
    if isinstance(data, (list, tuple)) and not data:
        raise DataError("empty list of images")
    raise DataError(f"cannot read images from a {type(data).__name__}; pass a dataset, a folder, paths or an (N,3,H,W) tensor")


def collate(samples: list[Sample]) -> tuple[torch.Tensor, Optional[torch.Tensor], list[Sample]]:
    """Stack images (and masks, when all present); images of unequal size are a clear error."""
    shapes = {tuple(s.image.shape) for s in samples}
    if len(shapes) > 1:
        raise DataError(
            f"images of different sizes in one batch ({sorted(shapes)}), e.g. {samples[0].path}; "
            "use a transform with a crop or a fixed (H, W) resize"
        )
    images = torch.stack([s.image for s in samples])
    masks = torch.stack([s.mask for s in samples]) if all(s.mask is not None for s in samples) else None
    return images, masks, samples
