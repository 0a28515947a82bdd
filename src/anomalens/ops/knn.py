"""Exact k-nearest-neighbour distances of query rows against a bank: faiss or torch, chunked, never N×M resident.

The bank may be a memory-mapped float16/float32 tensor: it is read chunk by chunk and upcast per chunk,
so a large saved bank is never copied into RAM as a whole.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

DEFAULT_CHUNK = 16384


def _merge_topk(best_d: Optional[torch.Tensor], best_i: Optional[torch.Tensor], d: torch.Tensor, i: torch.Tensor, k: int):
    if best_d is None:
        return d, i
    cat_d, cat_i = torch.cat([best_d, d], 1), torch.cat([best_i, i], 1)
    top_d, pos = torch.topk(cat_d, k, dim=1, largest=False, sorted=True)
    return top_d, torch.gather(cat_i, 1, pos)


def _chunk_f32(bank: torch.Tensor, start: int, stop: int, device: torch.device) -> torch.Tensor:
    return bank[start:stop].to(device=device, dtype=torch.float32)


def knn_torch(queries: torch.Tensor, bank: torch.Tensor, k: int = 1, chunk: int = DEFAULT_CHUNK,
              bank_sqnorm: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Squared L2 distances (Q, k) ascending and indices, by GEMM ‖q‖² + ‖m‖² − 2 q·m (clamped at 0)."""
    q = queries.float()
    qn = (q * q).sum(1, keepdim=True)
    best_d = best_i = None
    k_eff = min(k, bank.shape[0])
    for start in range(0, bank.shape[0], chunk):
        b = _chunk_f32(bank, start, start + chunk, q.device)
        bn = (b * b).sum(1) if bank_sqnorm is None else bank_sqnorm[start : start + chunk].to(q.device)
        d = torch.addmm(qn + bn[None, :], q, b.T, alpha=-2.0).clamp_(min=0.0)
        kk = min(k_eff, b.shape[0])
        cd, ci = torch.topk(d, kk, dim=1, largest=False, sorted=True)
        best_d, best_i = _merge_topk(best_d, best_i, cd, ci + start, k_eff)
    return best_d, best_i


def knn_faiss(queries: torch.Tensor, bank: torch.Tensor, k: int = 1, chunk: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Squared L2 distances and indices by faiss brute force (IndexFlatL2 arithmetic) on CPU arrays.

    A float32 bank (also memory-mapped) is passed to faiss without a copy; float16 banks are upcast per chunk.
    """
    import faiss

    q = np.ascontiguousarray(queries.detach().float().cpu().numpy())
    k_eff = min(k, bank.shape[0])
    if bank.dtype == torch.float32 and chunk <= 0:
        xb = bank.detach().cpu().numpy()
        D, I = faiss.knn(q, np.ascontiguousarray(xb), k_eff)
        return torch.from_numpy(D), torch.from_numpy(I)
    chunk = chunk if chunk > 0 else DEFAULT_CHUNK * 4
    best_d = best_i = None
    for start in range(0, bank.shape[0], chunk):
        xb = np.ascontiguousarray(bank[start : start + chunk].detach().float().cpu().numpy())
        D, I = faiss.knn(q, xb, min(k_eff, xb.shape[0]))
        best_d, best_i = _merge_topk(best_d, best_i, torch.from_numpy(D), torch.from_numpy(I) + start, k_eff)
    return best_d, best_i


class ApproximateIndex:
    """faiss IVF-PQ index for very large banks (the paper's §4.3 option): approximate, not the default."""

    def __init__(self, bank: torch.Tensor, n_list: int = 512, n_subquantizers: int = 64, bits: int = 8, n_probe: int = 8, seed: int = 0):
        import faiss

        x = np.ascontiguousarray(bank.detach().float().cpu().numpy())
        d = x.shape[1]
        if d % n_subquantizers:
            raise ValueError(f"feature dim {d} is not divisible by n_subquantizers={n_subquantizers}")
        n_list = max(1, min(n_list, x.shape[0] // 39))
        quantizer = faiss.IndexFlatL2(d)
        self.index = faiss.IndexIVFPQ(quantizer, d, n_list, n_subquantizers, bits)
        self.index.cp.seed = seed
        self.index.train(x)
        self.index.add(x)
        self.index.nprobe = n_probe

    def search(self, queries: torch.Tensor, k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """Approximate squared L2 distances and indices."""
        D, I = self.index.search(np.ascontiguousarray(queries.detach().float().cpu().numpy()), k)
        return torch.from_numpy(D).clamp_(min=0), torch.from_numpy(I)


def knn(queries: torch.Tensor, bank: torch.Tensor, k: int = 1, backend: str = "faiss", chunk: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact kNN, squared L2 distances; backend 'faiss' (CPU) or 'torch' (any device)."""
    if backend == "faiss" and queries.device.type == "cpu":
        return knn_faiss(queries, bank, k, chunk)
    if backend not in ("faiss", "torch"):
        raise ValueError(f"knn backend must be 'faiss' or 'torch', got {backend!r}")
    return knn_torch(queries, bank, k, chunk or DEFAULT_CHUNK)
