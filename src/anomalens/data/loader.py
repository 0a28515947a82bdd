"""Batched loading of a dataset through a model's transform, with a progress bar."""
from __future__ import annotations

from typing import Iterator, Optional

import torch
from torch.utils.data import DataLoader

from ..progress import track
from .datasets import DataLike, ImageDataset, as_dataset, collate
from .sample import Sample
from .transforms import ImageTransform


def iter_batches(
    data: DataLike,
    transform: Optional[ImageTransform],
    batch_size: int = 8,
    num_workers: int = 0,
    description: str = "loading",
) -> Iterator[tuple[torch.Tensor, Optional[torch.Tensor], list[Sample]]]:
    """Yield (images (B,3,H,W), masks (B,H,W) or None, samples) in dataset order."""
    ds: ImageDataset = as_dataset(data, transform)
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=collate)
    yield from track(loader, description, total=len(loader))
