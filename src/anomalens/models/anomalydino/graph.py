"""AnomalyDINO scoring as one traceable module for ONNX export (deploy/export.py's graph contract).

Input: (N, 3, H, W) native RGB in [0, 1] at a fixed (H, W) (the model's `transform.image` outputs). The official
preprocessing is part of the graph: uint8 rounding, Pillow's bicubic resize written as its two fixed-point passes
(float64 matrices of Pillow's 22-bit coefficients, rounding and clipping to uint8 after each pass: the same integers
as Pillow), ImageNet normalisation, bottom/right crop; then the ViT with the hub positional table of that size as a
constant, exact 1-NN cosine distance against the memory bank (an initializer), the top-1 % mean, the bilinear map at
(H, W) and Gaussian σ. The zero-shot mask's PCA needs the top eigenvector, which ONNX has no operator for: the graph
gets it by repeated squaring of the covariance (C ← C²/max|C|, 12 times = C^4096, in float64), which converges to
v₁v₁ᵀ whenever λ₂/λ₁ < 0.995 or so; its largest column, normalised, is ±v₁, then scikit-learn's sign rule.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...data import IMAGENET_MEAN, IMAGENET_STD
from ...ops.smoothing import gaussian_blur
from .torch_model import PATCH_SIZE, prepared_size

_PRECISION_BITS = 22  # Pillow's Resample.c: 32 - 8 - 2


def _bicubic(x: float) -> float:
    """Pillow's bicubic filter (a = −0.5)."""
    a = -0.5
    x = abs(x)
    if x < 1.0:
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    if x < 2.0:
        return (((x - 5) * x + 8) * x - 4) * a
    return 0.0


def pillow_bicubic_matrix(in_size: int, out_size: int) -> np.ndarray:
    """(out_size, in_size) float64 matrix of Pillow's fixed-point bicubic coefficients (precompute_coeffs +
    normalize_coeffs_8bpc), divided by 2^22: one resampling pass is floor(M @ x + 0.5), clipped to [0, 255]."""
    scale = float(in_size) / out_size
    filterscale = max(scale, 1.0)
    support = 2.0 * filterscale
    mat = np.zeros((out_size, in_size), dtype=np.float64)
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        ss = 1.0 / filterscale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size) - xmin
        k = [_bicubic((x + xmin - center + 0.5) * ss) for x in range(xmax)]
        ww = sum(k)
        if ww != 0.0:
            k = [v / ww for v in k]
        for x, v in enumerate(k):
            fixed = int(-0.5 + v * (1 << _PRECISION_BITS)) if v < 0 else int(0.5 + v * (1 << _PRECISION_BITS))
            mat[xx, x + xmin] = fixed / float(1 << _PRECISION_BITS)
    return mat


class AnomalyDINOGraph(nn.Module):
    """The fitted model's scoring of (N, 3, H, W) images at one (H, W)."""

    def __init__(self, model, size: tuple[int, int]):
        super().__init__()
        from ...deploy.export import ExportError

        if model.masking and model.mask_morphology not in ("1d", "2d"):
            raise ExportError(f"anomalydino: mask_morphology={model.mask_morphology!r} cannot be exported")
        self.masking, self.morphology = bool(model.masking), model.mask_morphology
        self.threshold = float(model.mask_threshold)
        H, W = (int(v) for v in size)
        self.size = (H, W)
        f = model.features_model()
        self.features = f
        rh, rw = prepared_size((H, W), int(model.resolution))
        # Pillow's output size before the crop (torchvision's smaller-edge rule): cropped later
        full_h, full_w = _resized(H, W, int(model.resolution))
        self.resize = (full_h, full_w) != (H, W)
        self.register_buffer("rows", torch.from_numpy(pillow_bicubic_matrix(H, full_h)))  # vertical pass
        self.register_buffer("cols", torch.from_numpy(pillow_bicubic_matrix(W, full_w)))  # horizontal pass
        self.crop = (rh, rw)
        self.grid = (rh // PATCH_SIZE, rw // PATCH_SIZE)
        f.pos_table(self.grid)  # computed now: a constant of the graph
        bank = model.memory_bank_.detach().float().cpu().clone()
        self.register_buffer("bank", bank)
        self.register_buffer("bank_sqnorm", (bank * bank).sum(1))
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD, dtype=torch.float32).view(1, 3, 1, 1))
        n = self.grid[0] * self.grid[1]
        self.k = max(int(n * float(model.top_fraction)), 1)
        self.sigma = float(model.sigma)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.round(torch.clamp(image * 255.0, 0.0, 255.0))  # the uint8 image
        if self.resize:
            x = x.double()
            x = torch.clamp(torch.floor(torch.matmul(x, self.cols.t()) + 0.5), 0.0, 255.0)  # horizontal, to uint8
            x = torch.clamp(torch.floor(torch.matmul(self.rows, x) + 0.5), 0.0, 255.0)  # vertical, to uint8
            x = x.float()
        x = (x / 255.0 - self.mean) / self.std
        x = x[:, :, : self.crop[0], : self.crop[1]]
        feats = self.features(x)  # (N, h·w, D)
        q = feats * torch.rsqrt((feats * feats).sum(-1, keepdim=True))
        sq = ((q * q).sum(-1, keepdim=True) + self.bank_sqnorm - 2.0 * torch.matmul(q, self.bank.t())).clamp(min=0.0)
        d = sq.min(-1).values / 2.0  # (N, h·w): 1 − cos to the nearest bank row
        if self.masking:
            d = torch.where(self._mask(feats), d, torch.zeros_like(d))
        score = torch.topk(d, self.k, dim=1).values.mean(1)
        grid = d.reshape(-1, 1, self.grid[0], self.grid[1])
        amap = F.interpolate(grid, size=self.size, mode="bilinear", align_corners=False)[:, 0]
        return score, gaussian_blur(amap, self.sigma)

    def _mask(self, feats: torch.Tensor) -> torch.Tensor:
        """`torch_model.background_mask` with the PCA by squaring (same rule, threshold, centre test, morphology)."""
        from .torch_model import _dilate1d, _dilate2d, _erode1d, _erode2d

        h, w = self.grid
        pc = first_component_by_squaring(feats)
        fg = (pc > self.threshold).float()  # float, not bool: onnxruntime has no boolean Where
        centre = fg.reshape(-1, h, w)[:, int(h * 0.2) : int(h * (1 - 0.2)), int(w * 0.2) : int(w * (1 - 0.2))]
        n_centre = centre.shape[1] * centre.shape[2]
        flip = centre.flatten(1).sum(1, keepdim=True) <= n_centre * 0.35
        m = torch.where(flip, (-pc > self.threshold).float(), fg)
        if self.morphology == "1d":
            m = _erode1d(_dilate1d(_dilate1d(m)))
        else:
            m = _erode2d(_dilate2d(_dilate2d(m.reshape(-1, h, w)))).flatten(1)
        return m > 0.5


def first_component_by_squaring(features: torch.Tensor, squarings: int = 12) -> torch.Tensor:
    """(B, N, D) -> (B, N) first principal component scores, as `torch_model.first_component` but with matrix products
    only (exportable): C = X_cᵀX_c squared `squarings` times with max-normalisation, its largest column normalised."""
    x = features.double()
    xc = x - x.mean(1, keepdim=True)
    c = torch.matmul(xc.transpose(1, 2), xc)
    for _ in range(squarings):
        c = torch.matmul(c, c)
        c = c / c.abs().amax(dim=(1, 2), keepdim=True)
    col = (c * c).sum(1).argmax(1)  # (B,)
    v = torch.gather(c, 2, col.view(-1, 1, 1).expand(-1, c.shape[1], 1))[..., 0]  # (B, D)
    v = v * torch.rsqrt((v * v).sum(1, keepdim=True))
    arg = v.abs().argmax(1, keepdim=True)
    v = v * torch.sign(torch.gather(v, 1, arg))
    return torch.matmul(xc, v.unsqueeze(-1))[..., 0]


def _resized(h: int, w: int, resolution: int) -> tuple[int, int]:
    """torchvision's smaller-edge output size (before the ×14 crop)."""
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(resolution * long / short)
    return (new_long, resolution) if w <= h else (resolution, new_long)

