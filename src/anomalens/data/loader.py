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
    """Yield (images (B,3,H,W), masks (B,H,W) or None, samples) in dataset order.

    A folder as it comes may mix image sizes: when a transform keeps them apart (aspect-preserving resize, no crop),
    a batch ends where the size changes, so every batch is one size and the order is kept.
    """
    ds: ImageDataset = as_dataset(data, transform)
    loader = DataLoader(ds, batch_size=None, shuffle=False, num_workers=num_workers, collate_fn=_identity)
    pending: list[Sample] = []
    for sample in track(loader, description, total=len(ds)):
        if pending and (len(pending) >= batch_size or sample.image.shape != pending[0].image.shape):
            yield collate(pending)
            pending = []
        pending.append(sample)
    if pending:
        yield collate(pending)


def _identity(sample: Sample) -> Sample:
    return sample
