"""Gaussian smoothing equal to scipy.ndimage.gaussian_filter(sigma, truncate=4, mode='reflect'), in torch."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def gaussian_kernel1d(sigma: float, truncate: float = 4.0, dtype=torch.float32) -> torch.Tensor:
    """Normalised 1-D kernel of radius round(truncate·σ), as scipy builds it."""
    radius = int(truncate * float(sigma) + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (x / float(sigma)) ** 2)
    return (k / k.sum()).to(dtype)


def _pad_symmetric(x: torch.Tensor, r: int, dim: int) -> torch.Tensor:
    """scipy 'reflect' (half-sample symmetric: d c b a | a b c d | d c b a), repeated for radii beyond the size."""
    n = x.shape[dim]
    idx = torch.arange(-r, n + r)
    period = 2 * n
    idx = torch.remainder(idx, period)
    idx = torch.where(idx >= n, period - 1 - idx, idx)
    return x.index_select(dim, idx.to(x.device))


def gaussian_blur(maps: torch.Tensor, sigma: float = 4.0, truncate: float = 4.0) -> torch.Tensor:
    """Blur (N, H, W) maps separably; sigma <= 0 returns the input."""
    if sigma <= 0:
        return maps
    k = gaussian_kernel1d(sigma, truncate, maps.dtype).to(maps.device)
    r = (len(k) - 1) // 2
    x = maps[:, None]
    x = F.conv2d(_pad_symmetric(x, r, 2), k.view(1, 1, -1, 1))
    x = F.conv2d(_pad_symmetric(x, r, 3), k.view(1, 1, 1, -1))
    return x[:, 0]
