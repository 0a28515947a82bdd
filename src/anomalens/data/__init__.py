"""Data layer: samples, datasets (MVTec AD, VisA, folders, paths, tensors), transforms, robust image I/O."""
from .datasets import (
    UNKNOWN_LABEL,
    DataLike,
    FolderDataset,
    ImageDataset,
    ImagePaths,
    MVTecAD,
    TensorDataset,
    VisA,
    as_dataset,
    collate,
)
from .image_io import load_image, load_mask
from .loader import iter_batches
from .sample import Sample, SampleRecord
from .transforms import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD, ImageTransform, resize_map

__all__ = [
    "UNKNOWN_LABEL", "DataLike", "FolderDataset", "ImageDataset", "ImagePaths", "MVTecAD", "TensorDataset", "VisA",
    "as_dataset", "collate", "load_image", "load_mask", "iter_batches", "Sample", "SampleRecord",
    "CLIP_MEAN", "CLIP_STD", "IMAGENET_MEAN", "IMAGENET_STD", "ImageTransform", "resize_map",
]
