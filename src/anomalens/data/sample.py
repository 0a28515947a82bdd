"""The sample type every dataset yields and every model consumes."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch


@dataclass(frozen=True)
class SampleRecord:
    """Where a sample lives on disk: image path, optional mask path, label (1 = anomalous), provenance."""

    path: str
    mask_path: Optional[str] = None
    label: int = 0
    category: str = ""
    defect_type: str = "good"


@dataclass
class Sample:
    """A loaded sample: image (3, h, w) float tensor, mask (h, w) bool tensor or None, label and provenance;
    size = (H, W) of the image as stored, before the transform."""

    image: torch.Tensor
    mask: Optional[torch.Tensor]
    label: int
    path: str
    category: str = ""
    defect_type: str = "good"
    size: Optional[tuple[int, int]] = None
