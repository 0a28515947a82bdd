"""Pixel-level metrics (AUROC, AP, F1-max) and AUPRO over all pixels of all test images of a category.

Exact mode sorts every pixel once and derives all four metrics from that one ranking. Binned mode
(`StreamingPixelMetrics`) accumulates histograms batch by batch in O(bins) memory and reports the
worst-case error of AUROC and AUPRO against the exact values.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from . import curves
from .regions import positive_region_weights


def _as_maps(maps, masks) -> tuple[np.ndarray, np.ndarray]:
    maps = np.asarray(_to_numpy(maps), dtype=np.float32)
    masks = np.asarray(_to_numpy(masks)).astype(bool)
    if maps.ndim == 2:
        maps, masks = maps[None], masks[None]
    if maps.shape != masks.shape:
        raise ValueError(f"anomaly maps {maps.shape} and masks {masks.shape} differ in shape")
    return maps, masks


def _to_numpy(x):
    if hasattr(x, "detach"):
        return x.detach().cpu().numpy()
    return x


def pixel_groups(maps, masks) -> curves.RankGroups:
    """Exact ranking groups of all pixels (with PRO region weights)."""
    maps, masks = _as_maps(maps, masks)
    weights, n_regions = positive_region_weights(masks)
    g = curves.group_exact(maps, masks, weights)
    g.n_regions = n_regions
    return g


def pixel_metrics(maps, masks, fpr_limit: float = curves.FPR_LIMIT) -> dict[str, float]:
    """Exact pixel AUROC, AP, F1-max and AUPRO from one sort of all pixels."""
    g = pixel_groups(maps, masks)
    return {
        "pixel_auroc": curves.auroc(g),
        "pixel_ap": curves.average_precision(g),
        "pixel_f1max": curves.f1_max(g),
        "aupro": curves.aupro(g, fpr_limit),
    }


class StreamingPixelMetrics:
    """Binned pixel metrics accumulated batch by batch: memory O(n_bins), not O(pixels).

    Scores are clipped to `score_range` and counted in `n_bins` equal bins; `compute()` returns the metrics
    plus `pixel_auroc_error_bound` and `aupro_error_bound`, the largest possible distance to the exact values.
    """

    def __init__(self, score_range: tuple[float, float], n_bins: int = 65536):
        lo, hi = float(score_range[0]), float(score_range[1])
        if not hi > lo:
            raise ValueError(f"score_range must have hi > lo, got {score_range}")
        self.lo, self.hi, self.n_bins = lo, hi, int(n_bins)
        self.neg = np.zeros(self.n_bins, dtype=np.float64)
        self.pos = np.zeros(self.n_bins, dtype=np.float64)
        self.pro = np.zeros(self.n_bins, dtype=np.float64)
        self.n_regions = 0

    def _bin(self, maps: np.ndarray) -> np.ndarray:
        scale = self.n_bins / (self.hi - self.lo)
        return np.clip(((maps - self.lo) * scale).astype(np.int64), 0, self.n_bins - 1)

    def update(self, maps, masks) -> "StreamingPixelMetrics":
        """Add a batch of (N, H, W) maps and masks."""
        maps, masks = _as_maps(maps, masks)
        weights, n = positive_region_weights(masks)
        b = self._bin(maps).ravel()
        m = masks.ravel()
        self.pos += np.bincount(b[m], minlength=self.n_bins)
        self.neg += np.bincount(b[~m], minlength=self.n_bins)
        self.pro += np.bincount(b[m], weights=weights, minlength=self.n_bins)
        self.n_regions += n
        return self

    def groups(self) -> curves.RankGroups:
        """Non-empty histogram bins as ranking groups (highest bin first)."""
        keep = (self.neg + self.pos) > 0
        return curves.RankGroups(self.neg[keep][::-1].copy(), self.pos[keep][::-1].copy(), self.pro[keep][::-1].copy(), self.n_regions)

    def compute(self, fpr_limit: float = curves.FPR_LIMIT) -> dict[str, float]:
        """Binned metrics and their error bounds."""
        g = self.groups()
        return {
            "pixel_auroc": curves.auroc(g),
            "pixel_ap": curves.average_precision(g),
            "pixel_f1max": curves.f1_max(g),
            "aupro": curves.aupro(g, fpr_limit),
            "pixel_auroc_error_bound": curves.auroc_error_bound(g),
            "aupro_error_bound": curves.aupro_error_bound(g, fpr_limit),
        }


def pixel_metrics_binned(maps_batches: Sequence, masks_batches: Sequence, score_range: Optional[tuple[float, float]] = None,
                         n_bins: int = 65536, fpr_limit: float = curves.FPR_LIMIT, chunk: int = 32) -> dict[str, float]:
    """Binned metrics over lists of map/mask batches (range from the data when not given)."""
    if score_range is None:
        lo = min(float(np.min(_to_numpy(m))) for m in maps_batches)
        hi = max(float(np.max(_to_numpy(m))) for m in maps_batches)
        score_range = (lo, hi if hi > lo else lo + 1.0)
    acc = StreamingPixelMetrics(score_range, n_bins)
    for m, k in zip(maps_batches, masks_batches):
        m, k = _as_maps(m, k)
        for s in range(0, len(m), chunk):  # bounded temporaries: one chunk of maps at a time
            acc.update(m[s : s + chunk], k[s : s + chunk])
    return acc.compute(fpr_limit)


def pro_musc(maps, masks, steps: int = 200, fpr_limit: float = curves.FPR_LIMIT) -> float:
    """PRO as the MuSc / APRIL-GAN / cflow-ad evaluation code computes it (for comparison with those papers only).

    `steps` thresholds arange(min, max, (max − min)/steps); a pixel is positive when its score is > threshold;
    points with FPR < fpr_limit are kept, their FPR axis min–max rescaled to [0, 1], then the trapezoid area.
    The library's standard is the exact `aupro`.
    """
    maps, masks = _as_maps(maps, masks)
    weights, n_regions = positive_region_weights(masks)
    if n_regions == 0:
        return float("nan")
    lo, hi = float(maps.min()), float(maps.max())
    thresholds = np.arange(lo, hi, (hi - lo) / steps) if hi > lo else np.array([lo])
    # #{v > th_k} = number of values whose count of smaller thresholds exceeds k
    idx_neg = np.searchsorted(thresholds, maps[~masks], side="left")
    idx_pos = np.searchsorted(thresholds, maps[masks], side="left")
    k = len(thresholds)
    neg_above = np.cumsum(np.bincount(idx_neg, minlength=k + 1)[::-1])[::-1][1:]
    pro_above = np.cumsum(np.bincount(idx_pos, weights=weights, minlength=k + 1)[::-1])[::-1][1:]
    fpr = neg_above / max((~masks).sum(), 1)
    pro = pro_above / n_regions
    keep = fpr < fpr_limit
    if keep.sum() < 2:
        return float("nan")
    f, p = fpr[keep], pro[keep]
    f = (f - f.min()) / (f.max() - f.min()) if f.max() > f.min() else f
    order = np.argsort(f, kind="stable")
    return float(np.trapezoid(p[order], f[order]))
