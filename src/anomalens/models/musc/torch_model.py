"""MuSc's torch core (paper §3.2, spec §3): LNAMD (Eq. 1 input), patch-to-image distances (Eq. 1), interval mean (Eq. 2)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

X_MAX = 0.3


def lnamd(tokens: torch.Tensor, grid: tuple[int, int], r: int) -> torch.Tensor:
    """(N, M, C) raw patch tokens -> (N, M, C) unit vectors z^{m,r}.

    One LayerNorm per image over the whole (C, h, w) map (no affine), r×r zero-padded mean (padding counted),
    then L2 normalisation of every patch vector. (Whether padding is counted cannot change z: the count is a
    per-position scale that the L2 normalisation removes. The zeros themselves, after the mean is subtracted, do.)
    """
    N, M, C = tokens.shape
    h, w = grid
    if h * w != M:
        raise ValueError(f"{M} tokens do not form a {h}x{w} grid")
    x = tokens.float().reshape(N, h, w, C).permute(0, 3, 1, 2)
    mu = x.mean(dim=(1, 2, 3), keepdim=True)
    var = x.var(dim=(1, 2, 3), keepdim=True, unbiased=False)
    x = (x - mu) / torch.sqrt(var + 1e-5)
    if r > 1:
        if r % 2 == 0:
            raise ValueError(f"aggregation degree r must be odd, got {r}")
        x = F.avg_pool2d(x, r, stride=1, padding=(r - 1) // 2, count_include_pad=True)
    return F.normalize(x.permute(0, 2, 3, 1).reshape(N, M, C), dim=-1)


def interval_k(n_others: int, x_max: float = X_MAX) -> int:
    """K = max(1, ⌊x_max · n_others⌋): how many of the smallest patch-to-image distances are averaged."""
    if n_others < 1:
        raise ValueError("mutual scoring needs at least one other image")
    return max(1, int(math.floor(x_max * n_others + 1e-9)))


def _pair_block(zi: torch.Tensor, zj: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For image blocks zi (a, M, C), zj (b, M, C): min distance of each patch of i to image j and vice versa."""
    a, M, C = zi.shape
    b = zj.shape[0]
    dots = (zi.reshape(a * M, C) @ zj.reshape(b * M, C).T).view(a, M, b, M)
    row = dots.amax(dim=3)  # (a, M, b): best match of each patch of i in image j
    col = dots.amax(dim=1)  # (a, b, M): best match of each patch of j in image i
    to_dist = lambda d: torch.sqrt(torch.clamp(2.0 - 2.0 * d, min=0.0))  # unit vectors: ‖x−y‖² = 2 − 2x·y
    return to_dist(row).permute(0, 2, 1), to_dist(col).permute(1, 0, 2)  # (a, b, M), (b, a, M)


def mutual_min_distances(z: torch.Tensor, block: int = 4) -> torch.Tensor:
    """A[i, j, m] = min_n ‖z_i^m − z_j^n‖ for i ≠ j (diagonal = +inf); each unordered pair computed once."""
    N = z.shape[0]
    A = torch.full((N, N, z.shape[1]), float("inf"), dtype=torch.float32, device=z.device)
    for s in range(0, N, block):
        zi = z[s : s + block]
        for i in range(s, s + len(zi) - 1):  # inside the diagonal block: only pairs i < j, one GEMM each
            d_ij, d_ji = _pair_block(z[i : i + 1], z[i + 1 : s + len(zi)])
            A[i, i + 1 : s + len(zi)] = d_ij[0]
            A[i + 1 : s + len(zi), i] = d_ji[:, 0]
        for t in range(s + block, N, block):
            zj = z[t : t + block]
            d_ij, d_ji = _pair_block(zi, zj)
            A[s : s + len(zi), t : t + len(zj)] = d_ij
            A[t : t + len(zj), s : s + len(zi)] = d_ji
    return A


def reduce_interval(A: torch.Tensor, k: int) -> torch.Tensor:
    """Eq. 2: mean of the k smallest values along dim 1 (partial sort), A (N, J, M) -> (N, M)."""
    return torch.topk(A, k, dim=1, largest=False, sorted=False).values.mean(1)


def msm_scores(z: torch.Tensor, x_max: float = X_MAX, block: int = 4) -> torch.Tensor:
    """Mutual scoring of one (layer, r) pair over a set: (N, M) patch scores ā."""
    N = z.shape[0]
    return reduce_interval(mutual_min_distances(z, block), interval_k(N - 1, x_max))


def reference_distances(z: torch.Tensor, ref: torch.Tensor, block: int = 4) -> torch.Tensor:
    """A[i, j, m] = min_n ‖z_i^m − ref_j^n‖ for query images z against a reference pool (no exclusion)."""
    out = torch.empty(z.shape[0], ref.shape[0], z.shape[1], dtype=torch.float32, device=z.device)
    for s in range(0, z.shape[0], block):
        for t in range(0, ref.shape[0], block):
            d, _ = _pair_block(z[s : s + block], ref[t : t + block])
            out[s : s + block, t : t + block] = d
    return out
