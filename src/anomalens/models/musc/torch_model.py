"""MuSc's torch core (paper §3.2, spec §3): LNAMD (Eq. 1 input), patch-to-image distances (Eq. 1), interval mean (Eq. 2).

All aggregation degrees r of one layer share one Gram matrix per image pair. LNAMD's r×r zero-padded mean is a
linear map P_r on each image's patch grid, so the dot products of aggregated patches are P_r (X_i X_jᵀ) P_rᵀ:
box sums of the layer-normalised Gram block along the query grid and the key grid, divided by the aggregated
patches' norms. One GEMM per pair and layer then serves every r (three in the paper's setting), where computing
z^{m,r} first costs one GEMM per pair, layer *and* r. The result is the same numbers up to float32 rounding.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

X_MAX = 0.3


def layer_norm_map(tokens: torch.Tensor, chunk: int = 8) -> torch.Tensor:
    """(N, M, C) raw tokens -> float32, one LayerNorm per image over the whole (M, C) map (no affine).

    Images are normalised `chunk` at a time into one output tensor: no full-size float copy of the input is made.
    """
    N = tokens.shape[0]
    out = torch.empty(tokens.shape, dtype=torch.float32, device=tokens.device)
    for s in range(0, N, chunk):
        t = tokens[s : s + chunk].float()
        out[s : s + chunk] = F.layer_norm(t.reshape(len(t), -1), (t[0].numel(),), eps=1e-5).view(t.shape)
    return out


def _check_r(r: int) -> None:
    if r < 1 or r % 2 == 0:
        raise ValueError(f"aggregation degree r must be a positive odd number, got {r}")


def box_sum(x: torch.Tensor, dims: Sequence[int], r: int, work: Optional[Sequence[torch.Tensor]] = None) -> torch.Tensor:
    """Zero-padded r-wide window sums along each axis in `dims` of x (r×r windows for two grid axes); r = 1
    returns x itself, otherwise x is left unchanged.

    Separable: along each axis a copy of x gets x shifted by ±1..±(r−1)/2 added in place (r − 1 passes per axis).
    `work`: two flat float buffers of at least x.numel() to ping-pong between (reused across calls: large fresh
    allocations cost page faults); the result then lives in one of them. The mean's 1/r² is left out: every use
    divides by a norm that cancels it.
    """
    _check_r(r)
    p = (r - 1) // 2
    if p == 0:
        return x
    for k, dim in enumerate(dims):
        n = x.shape[dim]
        y = torch.empty_like(x) if work is None else work[k % 2][: x.numel()].view(x.shape)
        y.copy_(x)
        for d in range(1, min(p, n - 1) + 1):
            y.narrow(dim, d, n - d).add_(x.narrow(dim, 0, n - d))
            y.narrow(dim, 0, n - d).add_(x.narrow(dim, d, n - d))
        x = y
    return x


def _grid_view(x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    N, M, C = x.shape
    h, w = grid
    if h * w != M:
        raise ValueError(f"{M} tokens do not form a {h}x{w} grid")
    return x.view(N, h, w, C)


def lnamd(tokens: torch.Tensor, grid: tuple[int, int], r: int) -> torch.Tensor:
    """(N, M, C) raw patch tokens -> (N, M, C) unit vectors z^{m,r}.

    One LayerNorm per image over the whole (C, h, w) map (no affine), r×r zero-padded mean (padding counted),
    then L2 normalisation of every patch vector. (Whether padding is counted cannot change z: the count is a
    per-position scale that the L2 normalisation removes. The zeros themselves, after the mean is subtracted, do.)
    """
    x = _grid_view(layer_norm_map(tokens), grid)
    return F.normalize(box_sum(x, (1, 2), r).reshape(tokens.shape), dim=-1)


def inverse_norms(x: torch.Tensor, grid: tuple[int, int], r: int, chunk: int = 8) -> torch.Tensor:
    """(N, M): 1 / ‖box_r(x)^m‖ for layer-normalised x (N, M, C); the normalisation of z^{m,r} without forming z
    (the box sums are taken `chunk` images at a time)."""
    norms = [torch.linalg.vector_norm(box_sum(_grid_view(c, grid), (1, 2), r), dim=-1) for c in x.split(chunk)]
    return torch.cat(norms).clamp_min(1e-12).reciprocal().reshape(x.shape[:2])


@dataclass
class LayerFeatures:
    """What every aggregation degree r of one layer needs: layer-normalised tokens x (N, M, C) on a grid (h, w),
    and 1/‖z^{m,r}‖ (N, M) per r — z itself is never formed."""

    x: torch.Tensor
    grid: tuple[int, int]
    r_list: tuple[int, ...]
    inv: list[torch.Tensor]

    @classmethod
    def from_tokens(cls, tokens: torch.Tensor, grid: tuple[int, int], r_list: Sequence[int] = (1, 3, 5)) -> "LayerFeatures":
        """Raw block tokens (N, M, C) -> LayerNorm per image, inverse LNAMD norms per r."""
        for r in r_list:
            _check_r(r)
        x = layer_norm_map(tokens)
        return cls(x, tuple(grid), tuple(r_list), [inverse_norms(x, grid, r) for r in r_list])

    @classmethod
    def from_vectors(cls, z: torch.Tensor) -> "LayerFeatures":
        """Patch vectors (N, M, C) used as they are (r = 1, cosine geometry; no LayerNorm)."""
        x, grid = z.float(), (z.shape[1], 1)
        return cls(x, grid, (1,), [inverse_norms(x, grid, 1)])

    def __len__(self) -> int:
        return self.x.shape[0]

    def take(self, images: slice) -> "LayerFeatures":
        """The same features for a slice of the images (LayerNorm and LNAMD are per image: nothing is recomputed)."""
        return replace(self, x=self.x[images], inv=[v[images] for v in self.inv])


def _to_dist(d: torch.Tensor) -> torch.Tensor:
    return torch.sqrt(torch.clamp(2.0 - 2.0 * d, min=0.0))  # unit vectors: ‖x−y‖² = 2 − 2x·y


def _pair_block(f: LayerFeatures, i: slice, g: LayerFeatures, j: slice, both: bool = True, work=None):
    """For image blocks i of f and j of g, per r: (a, b, M) min distance of each patch of i to each image of j
    and, if `both`, (b, a, M) of each patch of j to each image of i — all from one GEMM.

    `work`: three flat float buffers of at least (a·M)·(b·M) (the Gram block and two for the box sums)."""
    xi, xj = f.x[i], g.x[j]
    a, M, C = xi.shape
    b, Mj = xj.shape[0], xj.shape[1]
    (h, w), (hj, wj) = f.grid, g.grid
    work = work or _workspace(f.x, a * M * b * Mj)
    G = torch.mm(xi.reshape(a * M, C), xj.reshape(b * Mj, C).T, out=work[0][: a * M * b * Mj].view(a * M, b * Mj))
    G = G.view(a, h, w, b, hj, wj)
    out: list = [None] * len(f.r_list)
    order = sorted(range(len(f.r_list)), key=lambda k: f.r_list[k] == 1)  # r = 1 last: it scales G in place
    for n, k in enumerate(order):
        r = f.r_list[k]
        S = box_sum(G, (5, 4, 2, 1), r, work[1:]) if r > 1 else (G if n == len(order) - 1 else G.clone())
        S = S.view(a, M, b, Mj).mul_(f.inv[k][i].view(a, M, 1, 1)).mul_(g.inv[k][j].view(1, 1, b, Mj))
        row = _to_dist(S.amax(dim=3)).permute(0, 2, 1)  # best match of each patch of i in image j
        col = _to_dist(S.amax(dim=1)).permute(1, 0, 2) if both else None  # of each patch of j in image i
        out[k] = (row, col)
    return out


def _workspace(like: torch.Tensor, size: int) -> list[torch.Tensor]:
    """The three flat buffers `_pair_block` fills (Gram block, two box-sum buffers), allocated once per scoring."""
    return [torch.empty(size, dtype=like.dtype, device=like.device) for _ in range(3)]


def auto_block(n_patches: int, max_bytes: int = 64 * 2**20, most: int = 4) -> int:
    """Images per side of a pair block: the largest b ≤ `most` whose float32 Gram block (b·M)² fits `max_bytes`
    (4 at 225 patches; 2 at 1,369 patches, ViT-L-14 @ 518), so the box-sum copies of one block stay bounded."""
    b = most
    while b > 1 and 4 * (b * n_patches) ** 2 > max_bytes:
        b -= 1
    return b


def mutual_min_distances(f: LayerFeatures, block: Optional[int] = None) -> list[torch.Tensor]:
    """Per r: A[i, j, m] = min_n ‖z_i^{m,r} − z_j^{n,r}‖ for i ≠ j (diagonal = +inf); each unordered pair once.

    Pairs are taken `block` × `block` images at a time (None: `auto_block`), one GEMM per block for all r.
    Memory: the |R| tables (N·N·M float32 each) and three block buffers besides the layer's features."""
    N, M = f.x.shape[:2]
    block = block or auto_block(M)
    work = _workspace(f.x, (block * M) ** 2)
    A = [torch.full((N, N, M), float("inf"), dtype=torch.float32, device=f.x.device) for _ in f.r_list]
    for s in range(0, N, block):
        e = min(N, s + block)
        for i in range(s, e - 1):  # inside the diagonal block: only pairs i < j
            for Ar, (d_ij, d_ji) in zip(A, _pair_block(f, slice(i, i + 1), f, slice(i + 1, e), work=work)):
                Ar[i, i + 1 : e] = d_ij[0]
                Ar[i + 1 : e, i] = d_ji[:, 0]
        for t in range(e, N, block):
            u = min(N, t + block)
            for Ar, (d_ij, d_ji) in zip(A, _pair_block(f, slice(s, e), f, slice(t, u), work=work)):
                Ar[s:e, t:u] = d_ij
                Ar[t:u, s:e] = d_ji
    return A


def reference_distances(f: LayerFeatures, ref: LayerFeatures, block: Optional[int] = None) -> list[torch.Tensor]:
    """Per r: A[i, j, m] = min_n ‖z_i^{m,r} − ref_j^{n,r}‖ for query images against a reference pool (no exclusion)."""
    N, M = f.x.shape[:2]
    block = block or auto_block(M)
    work = _workspace(f.x, block * M * block * ref.x.shape[1])
    A = [torch.empty(N, len(ref), M, dtype=torch.float32, device=f.x.device) for _ in f.r_list]
    for s in range(0, N, block):
        for t in range(0, len(ref), block):
            for Ar, (d, _) in zip(A, _pair_block(f, slice(s, s + block), ref, slice(t, t + block), both=False, work=work)):
                Ar[s : s + block, t : t + block] = d
    return A


def interval_k(n_others: int, x_max: float = X_MAX) -> int:
    """K = max(1, ⌊x_max · n_others⌋): how many of the smallest patch-to-image distances are averaged."""
    if n_others < 1:
        raise ValueError("mutual scoring needs at least one other image")
    return max(1, int(math.floor(x_max * n_others + 1e-9)))


def reduce_interval(A: torch.Tensor, k: int) -> torch.Tensor:
    """Eq. 2: mean of the k smallest values along dim 1 (partial sort), A (N, J, M) -> (N, M)."""
    return torch.topk(A, k, dim=1, largest=False, sorted=False).values.mean(1)


def layer_msm_scores(f: LayerFeatures, x_max: float = X_MAX, block: Optional[int] = None) -> list[torch.Tensor]:
    """Mutual scoring of one layer over its set, per r: (N, M) interval-mean scores ā (Eq. 1-2)."""
    k = interval_k(len(f) - 1, x_max)
    return [reduce_interval(A, k) for A in mutual_min_distances(f, block)]


def msm_scores(z: torch.Tensor, x_max: float = X_MAX, block: Optional[int] = None) -> torch.Tensor:
    """Mutual scoring of one set of patch vectors (N, M, C) as given (r = 1, cosine geometry): (N, M) scores ā."""
    return layer_msm_scores(LayerFeatures.from_vectors(z), x_max, block)[0]
