"""AnomalyDINO's torch core (spec anomalydino.md §1): DINOv2 patch features as the official torch.hub model computes
them, the official preprocessing, rotation augmentation, zero-shot background masking and the scoring.

Symbols: f(x) ∈ ℝ^{n×D} the patch features of image x, M the memory bank of every (augmented) reference patch,
d(p, m) = 1 − ⟨p, m⟩/(‖p‖‖m‖), d_NN(p) = min_{m ∈ M} d(p, m); image score = mean of the top ⌊1 %·n⌋ of the
(masked) patch distances; anomaly map = the (h, w) grid bilinear to the original (H, W), then Gaussian σ = 4.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from ...data import IMAGENET_MEAN, IMAGENET_STD
from ...ops.smoothing import gaussian_blur

PATCH_SIZE = 14
#: the official rotation augmentation (utils.py:7): 8 angles, 0° included
ROTATION_ANGLES = (0, 45, 90, 135, 180, 225, 270, 315)


# ------------------------------------------------------------------------------------------ positional embeddings
def hub_interpolate_pos_embed(pos_embed: torch.Tensor, grid: tuple[int, int], offset: float = 0.1,
                              num_prefix: int = 1) -> torch.Tensor:
    """The torch.hub DINOv2 positional table for a (g_h, g_w) patch grid (spec §1.2, [D2] `interpolate_pos_encoding`).

    The released M × M table (M = 37 for 518 px) is resampled bicubically with scale_factor = ((g_h + 0.1)/M,
    (g_w + 0.1)/M) and no antialiasing; sampling positions therefore follow the scale factor, not the output size
    (timm's `resample_abs_pos_embed` uses the size and antialias=True: up to 4e-2 apart). A square grid equal to the
    released one is returned unchanged, as the hub does. `num_prefix` leading rows (the class token's) are kept.
    """
    gh, gw = int(grid[0]), int(grid[1])
    n = pos_embed.shape[1] - num_prefix
    m = int(math.isqrt(n))
    if m * m != n:
        raise ValueError(f"positional table of {n} patch positions is not a square grid")
    if (gh, gw) == (m, m):
        return pos_embed
    dim = pos_embed.shape[-1]
    table = pos_embed.float()
    patch = table[:, num_prefix:].reshape(1, m, m, dim).permute(0, 3, 1, 2)
    patch = F.interpolate(patch, scale_factor=((gh + offset) / m, (gw + offset) / m), mode="bicubic", antialias=False)
    if tuple(patch.shape[-2:]) != (gh, gw):  # the hub asserts the same
        raise ValueError(f"positional interpolation gave a {tuple(patch.shape[-2:])} grid, expected {(gh, gw)}")
    patch = patch.permute(0, 2, 3, 1).reshape(1, gh * gw, dim)
    return torch.cat([table[:, :num_prefix], patch], dim=1).to(pos_embed.dtype)


class DINOv2Patches(nn.Module):
    """f(x): the last block's tokens through the final LayerNorm, patch tokens only (hub `get_intermediate_layers(x)[0]`,
    spec §1.2), computed with a timm VisionTransformer's layers and the hub's positional interpolation.

    Input (B, 3, H′, W′) ImageNet-normalised with H′, W′ multiples of 14; output (B, h·w, D) in row-major grid order.
    The interpolated table of each grid size is computed once and cached.
    """

    def __init__(self, vit: nn.Module):
        super().__init__()
        self.vit = vit
        self.patch_size = int(vit.patch_embed.proj.kernel_size[0])
        self.embed_class = not getattr(vit, "no_embed_class", False)
        self.num_prefix = int(getattr(vit, "num_prefix_tokens", 1))
        self._tables: dict[tuple[int, int], torch.Tensor] = {}

    @property
    def dim(self) -> int:
        return int(self.vit.embed_dim)

    def pos_table(self, grid: tuple[int, int]) -> torch.Tensor:
        """The positional table for `grid` (cached per grid and device)."""
        key = (int(grid[0]), int(grid[1]))
        pos = self.vit.pos_embed
        table = self._tables.get(key)
        if table is None or table.device != pos.device:
            with torch.no_grad():
                table = hub_interpolate_pos_embed(pos.detach(), key, num_prefix=1 if self.embed_class else 0)
            self._tables[key] = table
        return table

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        vit = self.vit
        B, _, H, W = x.shape
        grid = (H // self.patch_size, W // self.patch_size)
        t = vit.patch_embed.norm(vit.patch_embed.proj(x).flatten(2).transpose(1, 2))
        prefix = [vit.cls_token.expand(B, -1, -1)] if vit.cls_token is not None else []
        pos = self.pos_table(grid)
        if self.embed_class:  # hub: cat(cls, patches) + table (the cls row included)
            t = torch.cat(prefix + [t], 1) + pos
            if getattr(vit, "reg_token", None) is not None:
                t = torch.cat([t[:, :1], vit.reg_token.expand(B, -1, -1), t[:, 1:]], 1)
        else:  # register variants: the table covers patches only, prefix tokens carry no position
            regs = [vit.reg_token.expand(B, -1, -1)] if getattr(vit, "reg_token", None) is not None else []
            t = torch.cat(prefix + regs + [t + pos], 1)
        t = vit.norm_pre(t)
        for blk in vit.blocks:
            t = blk(t)
        return vit.norm(t)[:, self.num_prefix :]


# ------------------------------------------------------------------------------------------ preprocessing
def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) RGB in [0, 1] -> (B, H, W, 3) uint8 (the official code reads uint8 images)."""
    arr = images.detach().float().cpu().mul(255.0).round_().clamp_(0, 255).to(torch.uint8)
    return arr.permute(0, 2, 3, 1).contiguous().numpy()


def prepare_image(image: np.ndarray, resolution: int) -> torch.Tensor:
    """Official `prepare_image` (backbones.py:102-122): PIL bicubic resize of the smaller edge to `resolution`
    (antialiased, aspect kept, uint8), ToTensor, ImageNet normalisation, bottom/right crop to multiples of 14."""
    pil = Image.fromarray(np.ascontiguousarray(image))
    pil = TF.resize(pil, int(resolution), interpolation=InterpolationMode.BICUBIC, antialias=True)
    t = TF.normalize(TF.to_tensor(pil), IMAGENET_MEAN, IMAGENET_STD)
    h, w = t.shape[1:]
    return t[:, : h - h % PATCH_SIZE, : w - w % PATCH_SIZE]


def prepared_size(size: tuple[int, int], resolution: int) -> tuple[int, int]:
    """(H′, W′) of `prepare_image` for an (H, W) image: torchvision's smaller-edge rule, then the crop to ×14."""
    h, w = int(size[0]), int(size[1])
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(resolution * long / short)
    nh, nw = (new_long, resolution) if w <= h else (resolution, new_long)
    return nh - nh % PATCH_SIZE, nw - nw % PATCH_SIZE


# ------------------------------------------------------------------------------------------ rotation
def _reflect101(idx: np.ndarray, n: int) -> np.ndarray:
    """OpenCV BORDER_REFLECT_101 (gfedcb|abcdefgh|gfedcba) for any integer index."""
    if n == 1:
        return np.zeros_like(idx)
    period = 2 * (n - 1)
    idx = np.mod(idx, period)
    return np.where(idx >= n, period - idx, idx)


def rotation_matrix(size: tuple[int, int], angle: float) -> np.ndarray:
    """cv2.getRotationMatrix2D((W/2, H/2), angle, 1.0): the forward 2×3 map, float64 (counter-clockwise degrees)."""
    h, w = size
    cx, cy = float(np.float32(w / 2)), float(np.float32(h / 2))  # cv::Point2f
    a = math.radians(angle)  # angle *= CV_PI/180
    alpha, beta = math.cos(a), math.sin(a)
    return np.array([[alpha, beta, (1 - alpha) * cx - beta * cy], [-beta, alpha, beta * cx + (1 - alpha) * cy]])


def rotate_image(image: np.ndarray, angle: float) -> np.ndarray:
    """Official `rotate_image` (utils.py:18-22): cv2.warpAffine(INTER_LINEAR, BORDER_REFLECT_101) about (W/2, H/2),
    same canvas, reproduced with OpenCV's fixed-point arithmetic (≤ 4.10: 1/32-pixel coordinates, 15-bit weights).

    (H, W, C) uint8 -> (H, W, C) uint8; 0° returns the input exactly.
    """
    if image.ndim == 2:
        return rotate_image(image[..., None], angle)[..., 0]
    h, w = image.shape[:2]
    M = rotation_matrix((h, w), angle)
    # invert (cv::warpAffine without WARP_INVERSE_MAP), in double as OpenCV
    D = M[0, 0] * M[1, 1] - M[0, 1] * M[1, 0]
    D = 1.0 / D if D != 0 else 0.0
    m0, m1, m3, m4 = M[1, 1] * D, -M[0, 1] * D, -M[1, 0] * D, M[0, 0] * D
    m2 = -m0 * M[0, 2] - m1 * M[1, 2]
    m5 = -m3 * M[0, 2] - m4 * M[1, 2]
    ab_scale, round_delta = 1 << 10, (1 << 10) // 32 // 2  # AB_BITS = 10, INTER_TAB_SIZE = 32
    xs, ys = np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64)
    adelta = np.rint(m0 * xs * ab_scale).astype(np.int64)
    bdelta = np.rint(m3 * xs * ab_scale).astype(np.int64)
    X0 = np.rint((m1 * ys + m2) * ab_scale).astype(np.int64) + round_delta
    Y0 = np.rint((m4 * ys + m5) * ab_scale).astype(np.int64) + round_delta
    X = (X0[:, None] + adelta[None, :]) >> 5  # AB_BITS - INTER_BITS
    Y = (Y0[:, None] + bdelta[None, :]) >> 5
    sx, sy, fx, fy = X >> 5, Y >> 5, X & 31, Y & 31
    # bilinear weights of OpenCV's table: (32 - f) / 32 products scaled by 2^15, exact integers
    w00, w01 = (32 - fy) * (32 - fx) * 32, (32 - fy) * fx * 32
    w10, w11 = fy * (32 - fx) * 32, fy * fx * 32
    x0, x1 = _reflect101(sx, w), _reflect101(sx + 1, w)
    y0, y1 = _reflect101(sy, h), _reflect101(sy + 1, h)
    src = image.astype(np.int64)
    acc = (src[y0, x0] * w00[..., None] + src[y0, x1] * w01[..., None] + src[y1, x0] * w10[..., None]
           + src[y1, x1] * w11[..., None])
    out = (acc + (1 << 14)) >> 15
    return np.clip(out, 0, 255).astype(np.uint8).reshape(image.shape)


def augment_image(image: np.ndarray, angles: Sequence[float] = ROTATION_ANGLES) -> list[np.ndarray]:
    """Official `augment_image` (utils.py:7-15): the image rotated by each angle (0° = the image itself)."""
    return [image if a % 360 == 0 else rotate_image(image, a) for a in angles]


# ------------------------------------------------------------------------------------------ masking
def first_component(features: torch.Tensor) -> torch.Tensor:
    """PCA with one component (spec §1.3 step 1): (B, N, D) -> (B, N) projections on the first principal axis of each
    image's centred features, exact (float64 eigen-decomposition), with scikit-learn ≥ 1.5's sign rule
    (`svd_flip(u_based_decision=False)`: the largest-magnitude entry of the axis is positive)."""
    x = features.double()
    xc = x - x.mean(1, keepdim=True)
    gram = xc.transpose(1, 2) @ xc  # (B, D, D)
    _, vecs = torch.linalg.eigh(gram)
    v = vecs[..., -1]  # (B, D): largest eigenvalue last
    arg = v.abs().argmax(1, keepdim=True)
    v = v * torch.sign(v.gather(1, arg))
    return (xc @ v[..., None])[..., 0]


def _dilate1d(m: torch.Tensor) -> torch.Tensor:
    return F.max_pool1d(m[:, None], 3, stride=1, padding=1)[:, 0]  # -inf padding: a neutral border, as cv2's default


def _erode1d(m: torch.Tensor) -> torch.Tensor:
    return -_dilate1d(-m)


def _dilate2d(m: torch.Tensor) -> torch.Tensor:
    return F.max_pool2d(m[:, None], 3, stride=1, padding=1)[:, 0]


def _erode2d(m: torch.Tensor) -> torch.Tensor:
    return -_dilate2d(-m)


def background_mask(features: torch.Tensor, grid: tuple[int, int], threshold: float = 10.0, border: float = 0.2,
                    min_centre: float = 0.35, morphology: str = "1d") -> torch.Tensor:
    """Zero-shot foreground mask of each image (official `compute_background_mask`, backbones.py:159-174; spec §1.3).

    (B, N, D) raw patch features -> (B, N) bool, True = foreground (scored). pc = first principal component;
    foreground = pc > threshold, or −pc > threshold when the centre (grid without `border` on each side) is at most
    `min_centre` foreground; then dilate and close with a 3×3 kernel. morphology="1d" is the official behaviour:
    the mask is still an (N, 1) column there, so both operations run along the flattened row-major sequence
    (wrapping from row end to next row start, never vertical); "2d" applies them on the (h, w) grid.
    """
    if morphology not in ("1d", "2d"):
        raise ValueError(f"mask morphology must be '1d' (official) or '2d', got {morphology!r}")
    h, w = int(grid[0]), int(grid[1])
    pc = first_component(features)
    fg = pc > threshold
    centre = fg.view(-1, h, w)[:, int(h * border) : int(h * (1 - border)), int(w * border) : int(w * (1 - border))]
    flip = centre.flatten(1).sum(1).double() <= centre[0].numel() * min_centre
    fg = torch.where(flip[:, None], -pc > threshold, fg)
    m = fg.float()
    if morphology == "1d":
        m = _erode1d(_dilate1d(_dilate1d(m)))  # cv2.dilate, then MORPH_CLOSE = dilate + erode
    else:
        m = _erode2d(_dilate2d(_dilate2d(m.view(-1, h, w)))).flatten(1)
    return m > 0.5


# ------------------------------------------------------------------------------------------ scoring
def l2_normalise(x: torch.Tensor) -> torch.Tensor:
    """Rows divided by their L2 norm (faiss.normalize_L2; zero rows stay zero)."""
    x = x.float()
    n = (x * x).sum(-1, keepdim=True)
    return torch.where(n > 0, x * n.rsqrt(), x)


def top_fraction_mean(distances: torch.Tensor, fraction: float = 0.01) -> torch.Tensor:
    """Official `mean_top1p` (post_eval.py:293-297): (B, N) -> (B,) mean of the ⌊fraction·N⌋ largest values, the
    maximum when that is 0."""
    n = distances.shape[1]
    k = int(n * fraction)
    if k == 0:
        return distances.max(1).values
    return distances.topk(k, dim=1).values.mean(1)


def distance_maps(grids: torch.Tensor, size: tuple[int, int], sigma: float = 4.0) -> torch.Tensor:
    """Official `dists2map` (utils.py:25-30): (B, h, w) distances -> (B, H, W), bilinear (half-pixel centres) to the
    image size, then Gaussian σ (scipy reflect, truncate 4), in float64."""
    up = F.interpolate(grids.double()[:, None], size=tuple(int(v) for v in size), mode="bilinear", align_corners=False)[:, 0]
    return gaussian_blur(up, sigma)
