"""PatchCore's torch core: locally aware patch features (§3.1) and the scoring of §3.3 (Eq. 6, Eq. 7)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ...ops.pooling import PatchAggregator, aggregate_anomalib


class PatchFeatures(nn.Module):
    """φ_j taps -> P_{s=1,p}(φ) on the first layer's grid -> (B, d, h, w) patch features."""

    def __init__(self, extractor: nn.Module, channels: Sequence[int], patch_size: int = 3, pretrain_dim: int = 1024,
                 target_dim: int = 1024, aggregation: str = "official"):
        super().__init__()
        self.extractor = extractor
        if aggregation == "official":
            self.aggregate = PatchAggregator(channels, patch_size, pretrain_dim, target_dim)
            self.dim = int(target_dim)
        elif aggregation == "anomalib":
            self.aggregate = aggregate_anomalib
            self.dim = int(sum(channels))
        else:
            raise ValueError(f"aggregation must be 'official' or 'anomalib', got {aggregation!r}")

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised images -> (B, d, h, w)."""
        feats = self.extractor(images)
        return self.aggregate(list(feats.values()))


def reweighted_score(s_star: torch.Tensor, neighbour_dists: torch.Tensor) -> torch.Tensor:
    """Eq. 7: s = (1 − exp(s*) / Σ_{m ∈ N_b(m*)} exp(‖m_test* − m‖)) · s*, in softmax form (no overflow).

    neighbour_dists (B, b): distances from m_test* to the b nearest bank features of m*, m* itself first
    (its distance is s*). b = 1 returns s* unchanged.
    """
    if neighbour_dists.shape[1] <= 1:
        return s_star
    w = 1.0 - torch.softmax(neighbour_dists.double(), dim=1)[:, 0]
    return (w * s_star.double()).to(s_star.dtype)
