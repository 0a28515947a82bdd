"""Locally aware patch features (PatchCore §3.1, spec §2.2): p×p zero-padded neighbourhoods, adaptive 1-D pooling.

`adaptive_pool_matrix(L, n)` is torch's adaptive_avg_pool1d as an (n, L) matrix; `PatchAggregator` folds the
official code's unfold → per-layer pool → stack → pool pipeline into one sparse depthwise convolution per layer,
which is exact (everything is linear) and costs a few multiply-adds per output value.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F


def adaptive_pool_matrix(length: int, n_out: int) -> torch.Tensor:
    """(n_out, length) float64 matrix W with W @ v == adaptive_avg_pool1d(v, n_out)."""
    W = torch.zeros(n_out, length, dtype=torch.float64)
    for i in range(n_out):
        s = (i * length) // n_out
        e = math.ceil((i + 1) * length / n_out)
        W[i, s:e] = 1.0 / (e - s)
    return W


class PatchAggregator:
    """Per-layer feature maps -> (B, target_dim, h_ref, w_ref) locally aware patch features, as the official code.

    For layer j with c_j channels the official vector is adaptive_pool(unfold_p(φ_j)) (length pretrain_dim),
    the layers are stacked and pooled again to target_dim. Composed, output t of layer j is a sum of a few
    p×p filters over a few channels: (t, c, w[p, p]) triplets evaluated as a grouped convolution.
    """

    def __init__(self, channels: Sequence[int], patch_size: int = 3, pretrain_dim: int = 1024, target_dim: int = 1024):
        self.channels = list(channels)
        self.p = int(patch_size)
        self.pretrain_dim, self.target_dim = int(pretrain_dim), int(target_dim)
        n_layers = len(self.channels)
        W2 = adaptive_pool_matrix(n_layers * self.pretrain_dim, self.target_dim)
        self.terms = []
        for j, c in enumerate(self.channels):
            W1 = adaptive_pool_matrix(c * self.p * self.p, self.pretrain_dim)
            M = (W2[:, j * self.pretrain_dim : (j + 1) * self.pretrain_dim] @ W1).view(self.target_dim, c, self.p * self.p)
            t_idx, c_idx = torch.nonzero(M.abs().sum(-1) > 0, as_tuple=True)
            weights = M[t_idx, c_idx].view(-1, 1, self.p, self.p).float()
            self.terms.append((t_idx, c_idx, weights))

    def __call__(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        """feats[j]: (B, c_j, h_j, w_j); the first layer's grid is the reference grid."""
        ref = feats[0].shape[-2:]
        B = feats[0].shape[0]
        out = feats[0].new_zeros(B, self.target_dim, *ref)
        for f, (t_idx, c_idx, w) in zip(feats, self.terms):
            x = f.index_select(1, c_idx.to(f.device))
            y = F.conv2d(x, w.to(f.device, f.dtype), padding=self.p // 2, groups=len(c_idx))
            rows, inv = torch.unique(t_idx, return_inverse=True)
            part = f.new_zeros(B, len(rows), *f.shape[-2:]).index_add_(1, inv.to(f.device), y)
            if tuple(part.shape[-2:]) != tuple(ref):
                part = F.interpolate(part, size=ref, mode="bilinear", align_corners=False)
            out.index_add_(1, rows.to(f.device), part)
        return out


def aggregate_reference(feats: Sequence[torch.Tensor], patch_size: int = 3, pretrain_dim: int = 1024, target_dim: int = 1024) -> torch.Tensor:
    """The official pipeline step by step (slow, obviously correct): unfold, upsample, pool, stack, pool."""
    p = patch_size
    ref = feats[0].shape[-2:]
    per_layer = []
    for f in feats:
        B, c, h, w = f.shape
        u = F.unfold(f, p, padding=p // 2).view(B, c * p * p, h, w)  # channel-major c·p² per position
        if (h, w) != tuple(ref):
            u = F.interpolate(u, size=ref, mode="bilinear", align_corners=False)
        v = u.permute(0, 2, 3, 1).reshape(-1, 1, c * p * p)
        per_layer.append(F.adaptive_avg_pool1d(v, pretrain_dim))
    stacked = torch.cat(per_layer, 1).reshape(per_layer[0].shape[0], 1, -1)
    out = F.adaptive_avg_pool1d(stacked, target_dim).view(feats[0].shape[0], ref[0], ref[1], target_dim)
    return out.permute(0, 3, 1, 2)


def aggregate_anomalib(feats: Sequence[torch.Tensor]) -> torch.Tensor:
    """anomalib's variant: plain 3×3 mean per layer (padding counted), bilinear upsampling, concatenation."""
    ref = feats[0].shape[-2:]
    outs = []
    for f in feats:
        g = F.avg_pool2d(f, 3, 1, 1, count_include_pad=True)
        if tuple(g.shape[-2:]) != tuple(ref):
            g = F.interpolate(g, size=ref, mode="bilinear", align_corners=False)
        outs.append(g)
    return torch.cat(outs, 1)
