"""Greedy k-center coreset (PatchCore §3.2, Alg. 1) — exact, fast: one fused GEMV per step, no host syncs.

Selection is identical to the plain greedy algorithm: pick argmax_m δ(m), then δ(m) ← min(δ(m), ‖ψ(m) − ψ(c)‖).
We keep δ² (same argmax), update it with ‖x‖² − 2x·c + ‖c‖² from precomputed norms, and mask chosen points.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch

from ..progress import track


def coreset_size(n: int, ratio: float) -> int:
    """l = max(1, ⌊ratio·N⌋); ratio must be in (0, 1]."""
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"coreset ratio must be in (0, 1], got {ratio}")
    return max(1, int(math.floor(ratio * n)))


def random_projection(in_dim: int, out_dim: int, seed: int) -> torch.Tensor:
    """ψ: dense (in_dim, out_dim) matrix, entries U(±1/√in_dim) from a seeded generator (the official code's layout)."""
    g = torch.Generator().manual_seed(int(seed))
    bound = 1.0 / math.sqrt(in_dim)
    return (torch.rand(in_dim, out_dim, generator=g) * 2 - 1) * bound


def project(features: torch.Tensor, proj: Optional[torch.Tensor], chunk: int = 65536, dtype=torch.float32,
            device: Optional[torch.device] = None) -> torch.Tensor:
    """ψ(M) in row chunks (the bank may be memory-mapped and float16); None = no projection."""
    device = device or torch.device("cpu")
    out = torch.empty(features.shape[0], proj.shape[1] if proj is not None else features.shape[1], dtype=dtype, device=device)
    for s in range(0, features.shape[0], chunk):
        x = features[s : s + chunk].to(device=device, dtype=dtype)
        out[s : s + chunk] = x @ proj.to(device=device, dtype=dtype) if proj is not None else x
    return out


def greedy_coreset(
    features: torch.Tensor,
    ratio: float = 0.1,
    n: Optional[int] = None,
    proj_dim: int = 128,
    seed: int = 0,
    start: str = "mean10",
    dtype=torch.float32,
    device: Optional[torch.device] = None,
    progress: bool = True,
    prune: bool = False,
) -> torch.Tensor:
    """Indices (l,) of the greedy coreset of `features` (N, d), in selection order (ratio 1 = all rows, in order)."""
    N, d = features.shape
    if n is None and ratio >= 1.0:
        return torch.arange(N)
    l = n if n is not None else coreset_size(N, ratio)
    proj = random_projection(d, proj_dim, seed) if d > proj_dim else None
    x = project(features, proj, dtype=dtype, device=device)
    return greedy_select(x, l, seed=seed, start=start, progress=progress, prune=prune)


def greedy_select(x: torch.Tensor, l: int, seed: int = 0, start: str = "mean10", progress: bool = True,
                  prune: bool = False) -> torch.Tensor:
    """The greedy loop on already-projected points x (N, d*): l indices in selection order.

    prune=True skips, exactly, the points a new centre c cannot update: every point m keeps the centre a that
    set δ(m); if ‖a − c‖ ≥ 2·max_{m∈a} δ(m) then ‖m − c‖ ≥ δ(m) for the whole group (triangle inequality).
    Same selection; faster only on strongly clustered banks (measured 3x on 50 tight clusters, but 2.8x
    slower on real EfficientNet patch features of MVTec hazelnut at 10 %), hence off by default.

    start='mean10': δ₀ = mean distance to 10 seeded random points, none of them selected (official code);
    start='random_point': one seeded random point is selected first (anomalib).
    """
    N = x.shape[0]
    l = min(int(l), N)
    sq = (x * x).sum(1)
    rng = np.random.default_rng(seed)
    selected = torch.empty(l, dtype=torch.long, device=x.device)
    if start == "mean10":
        idx = torch.as_tensor(rng.choice(N, size=min(10, N), replace=False), device=x.device)
        starts = x[idx]
        dist = torch.addmm(sq[:, None] + (starts * starts).sum(1)[None, :], x, starts.T, alpha=-2.0).clamp_(min=0).sqrt_()
        delta = dist.mean(1).square_()  # square of the mean distance, not the mean of squares
        first = 0
    elif start == "random_point":
        i0 = int(rng.integers(N))
        selected[0] = i0
        delta = torch.addmv(sq, x, x[i0], alpha=-2.0).add_(sq[i0]).clamp_(min=0)
        delta[i0] = -1.0
        first = 1
    else:
        raise ValueError(f"start must be 'mean10' or 'random_point', got {start!r}")
    steps = range(first, l)
    steps = track(steps, "coreset", total=len(steps)) if progress and l - first > 2000 else steps
    if prune:
        return _select_pruned(x, sq, delta, selected, first, steps)
    for i in steps:
        j = torch.argmax(delta)  # stays a tensor: no host sync on GPU
        selected[i] = j
        dist = torch.addmv(sq, x, x[j], alpha=-2.0).add_(sq[j])
        torch.minimum(delta, dist, out=delta)
        delta[j] = -1.0  # never selected twice, even with duplicate points
    return selected.cpu()


def _select_pruned(x, sq, delta, selected, first, steps) -> torch.Tensor:
    """The same greedy loop with exact triangle-inequality pruning (δ kept squared; group -1 = start distances)."""
    N = x.shape[0]
    l = selected.shape[0]
    owner = torch.full((N,), -1, dtype=torch.long, device=x.device)  # index into `selected` of the point's centre
    gmax = torch.zeros(l, dtype=x.dtype, device=x.device)  # squared max δ per centre's group
    if first == 1:  # random_point start: every point already belongs to the first centre
        owner.fill_(0)
        gmax[0] = delta.clamp(min=0).max()
    for i in steps:
        j = torch.argmax(delta)
        selected[i] = j
        c = x[j]
        if i > 0:
            cen = x[selected[:i]]
            d_cc = (cen * cen).sum(1) - 2.0 * (cen @ c) + sq[j]  # squared centre-to-new-centre distances
            live = d_cc < 4.0 * gmax[:i] * (1.0 + 1e-5) + 1e-12  # groups the new centre might reach
            cand = torch.nonzero((owner < 0) | live[owner.clamp(min=0)], as_tuple=True)[0]
        else:
            cand = torch.arange(N, device=x.device)
        dist = torch.addmv(sq[cand], x[cand], c, alpha=-2.0).add_(sq[j])
        better = dist < delta[cand]
        upd = cand[better]
        delta[upd] = dist[better]
        owner[upd] = i
        delta[j] = -1.0
        owner[j] = i
        gmax[: i + 1] = 0
        member = owner >= 0
        gmax.scatter_reduce_(0, owner[member], delta[member].clamp(min=0), reduce="amax", include_self=True)
    return selected.cpu()


def chunked_select(x: torch.Tensor, ratio: float, chunk: Optional[int], device: Optional[torch.device] = None,
                   seed: int = 0, start: str = "mean10", prune: bool = False, limit: Optional[int] = None) -> torch.Tensor:
    """Greedy coreset of x (N, d*) projected points: l = ⌊ratio·N⌋ rows (at most `limit`), selected per consecutive
    chunk of `chunk` rows.

    chunk None (or ≥ N): one exact selection, identical to `greedy_select`. Otherwise each chunk keeps its share of l
    (l · rows / N, at least 1) from its own rows, so the cost is O(l · chunk) — linear in N for a fixed ratio, and
    bounded by `limit` — instead of O(l · N), and every chunk (a span of images or tiles) keeps its own coverage.
    Indices are into x, chunk by chunk, each chunk in its selection order.
    """
    N = x.shape[0]
    total = coreset_size(N, ratio)
    if limit is not None:
        total = min(total, int(limit))
    if chunk is None or N <= chunk:
        return greedy_select(x.to(device) if device is not None else x, total, seed=seed, start=start, prune=prune).cpu()
    out = []
    bounds = list(range(0, N, int(chunk)))
    if len(bounds) > 1 and N - bounds[-1] < int(chunk) // 2:  # no tiny last chunk: fold it into the one before
        bounds.pop()
    for i, lo in enumerate(bounds):
        hi = bounds[i + 1] if i + 1 < len(bounds) else N
        part = x[lo:hi].to(device) if device is not None else x[lo:hi]
        share = max(1, int(round(total * (hi - lo) / N)))
        out.append(greedy_select(part, share, seed=seed + i, start=start, prune=prune, progress=False).cpu() + lo)
    return torch.cat(out)
