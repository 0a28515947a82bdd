"""RsCIN (MuSc §3.3, Eq. 5): re-score image scores with a constrained kNN graph over image-level features.

Usable after any method: `rscin(scores, cls_features, k_list=(1, 2, 3))` over a set, or
`rscin_reference(...)` for images scored one by one against a fixed reference set (stream mode).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch


def _windowed_mean(W: torch.Tensor, values: torch.Tensor, self_cols: torch.Tensor, k_list: Sequence[int]) -> torch.Tensor:
    """mean_k D_k⁻¹ W_k v for graph rows W (R, C) over C images with values v (C,): each row keeps its k largest
    weights (ties: smallest column first); a row whose kept weights sum to ≤ 0 takes its own image's value
    (column `self_cols[row]`) alone."""
    order = torch.sort(-W, dim=1, stable=True).indices  # descending, smallest index first among ties
    out = torch.zeros(W.shape[0], dtype=torch.float64)
    for k in k_list:
        k_eff = max(1, min(int(k), W.shape[1]))
        mask = torch.zeros_like(W, dtype=torch.bool).scatter_(1, order[:, :k_eff], True)
        Wk = torch.where(mask, W, torch.zeros_like(W))
        rows = Wk.sum(1)
        out += torch.where(rows > 0, (Wk @ values) / rows.clamp(min=1e-300), values[self_cols])
    return out / len(k_list)


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
    return _windowed_mean(g @ g.T, ct, torch.arange(n), k_list)


def rscin_reference(scores: torch.Tensor, features: torch.Tensor, ref_scores: torch.Tensor, ref_features: torch.Tensor,
                    k_list: Sequence[int] = (1, 2, 3), bounds: Optional[tuple[float, float]] = None) -> torch.Tensor:
    """RsCIN of each query image on its own against a fixed reference set (stream mode).

    Query i's window is drawn from {i} ∪ reference (itself first among ties), never from the other queries, and
    c̃ = (c − lo)/(hi − lo) with (lo, hi) = `bounds` or the reference scores' min and max — not clipped, so a
    query above the reference maximum scores above 1. For one query whose score lies inside the reference range
    this equals `rscin` over [query, reference] at the query's row. A constant reference leaves c unscaled.
    """
    c = torch.as_tensor(scores, dtype=torch.float64).flatten()
    g = torch.as_tensor(features, dtype=torch.float64)
    rc = torch.as_tensor(ref_scores, dtype=torch.float64).flatten()
    rg = torch.as_tensor(ref_features, dtype=torch.float64)
    if g.shape[0] != c.numel() or rg.shape[0] != rc.numel():
        raise ValueError(f"scores and feature rows differ: {c.numel()} vs {g.shape[0]}, reference {rc.numel()} vs {rg.shape[0]}")
    lo, hi = (float(rc.min()), float(rc.max())) if bounds is None else (float(bounds[0]), float(bounds[1]))
    scale = (hi - lo) if hi > lo else 1.0
    lo = lo if hi > lo else 0.0
    ct, rct = (c - lo) / scale, (rc - lo) / scale
    out = torch.empty_like(ct)
    for i in range(len(ct)):  # each query's own row of the graph over [itself, reference]
        W = g[i : i + 1] @ torch.cat([g[i : i + 1], rg]).T
        out[i] = _windowed_mean(W, torch.cat([ct[i : i + 1], rct]), torch.zeros(1, dtype=torch.long), k_list)[0]
    return out
