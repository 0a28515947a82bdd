"""RsCIN (MuSc §3.3, Eq. 5): re-score image scores with a constrained kNN graph over image-level features.

Usable after any method: `rscin(scores, cls_features, k_list=(1, 2, 3))`.
"""
from __future__ import annotations

from typing import Sequence

import torch


def rscin(scores: torch.Tensor, features: torch.Tensor, k_list: Sequence[int] = (1, 2, 3)) -> torch.Tensor:
    """ĉ = mean_k D_k⁻¹ W_k c̃, W = G·Gᵀ restricted to each row's k largest entries (self included).

    c̃ is c min–max normalised over the set (returned unchanged when constant). Ties in the top-k resolve
    to the smallest index; a row whose kept weights sum to ≤ 0 falls back to the identity.
    """
    c = torch.as_tensor(scores, dtype=torch.float64).flatten()
    g = torch.as_tensor(features, dtype=torch.float64)
    n = c.numel()
    if g.shape[0] != n:
        raise ValueError(f"{n} scores but {g.shape[0]} feature rows")
    lo, hi = c.min(), c.max()
    if not hi > lo:
        return c.clone()
    ct = (c - lo) / (hi - lo)
    W = g @ g.T
    order = torch.sort(-W, dim=1, stable=True).indices  # descending, smallest index first among ties
    out = torch.zeros_like(ct)
    eye = torch.eye(n, dtype=torch.float64)
    for k in k_list:
        k_eff = max(1, min(int(k), n))
        mask = torch.zeros_like(W, dtype=torch.bool).scatter_(1, order[:, :k_eff], True)
        Wk = torch.where(mask, W, torch.zeros_like(W))
        rows = Wk.sum(1, keepdim=True)
        P = torch.where(rows > 0, Wk / rows.clamp(min=1e-300), eye)
        out += P @ ct
    return out / len(k_list)
