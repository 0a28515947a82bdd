"""One ranking core for every metric: grouped counts from the highest score to the lowest.

Every metric here (AUROC, AP, F1-max, AUPRO) is a function of the same ordered list of score groups:
for each distinct score (or, in binned mode, each score bin) the number of negatives, of positives and
the summed per-region weights 1/(|r|·R) of its positive pixels. Exact mode groups by distinct value;
binned mode groups by histogram bin and can accumulate over batches (streaming).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

FPR_LIMIT = 0.3


@dataclass
class RankGroups:
    """Counts per score group, ordered from the highest score to the lowest."""

    neg: np.ndarray  # (G,) float64 negatives per group
    pos: np.ndarray  # (G,) float64 positives per group
    pro: Optional[np.ndarray] = None  # (G,) float64 sum of 1/|r| over region pixels in the group
    n_regions: int = 0


def group_exact(scores: np.ndarray, labels: np.ndarray, pos_weight: Optional[np.ndarray] = None) -> RankGroups:
    """Group by distinct score value (ties merged into one curve point, as scikit-learn and the MVTec script do).

    pos_weight: optional per-positive weights (1/|r| for PRO), in the order of `scores[labels]`.
    """
    scores = np.asarray(scores).ravel()
    labels = np.asarray(labels).ravel().astype(bool)
    if scores.shape != labels.shape:
        raise ValueError(f"scores and labels differ in size: {scores.shape} vs {labels.shape}")
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores contain NaN or infinity")
    # One value sort (much faster than an argsort), then positives located by binary search.
    s = np.sort(scores)
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    uniq = s[starts]
    size = np.diff(np.r_[starts, len(s)]).astype(np.float64)
    gi = np.searchsorted(uniq, scores[labels])
    pos = np.bincount(gi, minlength=len(uniq)).astype(np.float64)
    pro = None
    if pos_weight is not None:
        w = np.asarray(pos_weight, dtype=np.float64).ravel()
        pro = np.bincount(gi, weights=w, minlength=len(uniq))[::-1].copy()
    size, pos = size[::-1].copy(), pos[::-1].copy()
    return RankGroups(size - pos, pos, pro)


def _trapezoid_bound(x: np.ndarray, y: np.ndarray) -> float:
    """Worst-case area error of the chord between sampled points of a monotone curve: 0.5·Σ Δx·Δy."""
    return float(0.5 * np.sum(np.diff(x) * np.diff(y)))


def auroc(g: RankGroups) -> float:
    """Area under ROC (ties count half); NaN when one class is absent."""
    P, N = g.pos.sum(), g.neg.sum()
    if P == 0 or N == 0:
        return float("nan")
    tpr = np.r_[0.0, np.cumsum(g.pos) / P]
    fpr = np.r_[0.0, np.cumsum(g.neg) / N]
    return float(np.trapezoid(tpr, fpr))


def auroc_error_bound(g: RankGroups) -> float:
    """Max |binned AUROC − exact AUROC|: half the fraction of (pos, neg) pairs sharing a histogram bin.

    Meaningful for binned groups only: in exact groups a shared group is a true tie, already scored ½.
    """
    P, N = g.pos.sum(), g.neg.sum()
    if P == 0 or N == 0:
        return float("nan")
    return float(0.5 * np.sum(g.pos * g.neg) / (P * N))


def _cumulative(g: RankGroups) -> tuple[float, np.ndarray, np.ndarray]:
    """(P, TP, predicted positives) at every threshold, from the highest down."""
    return float(g.pos.sum()), np.cumsum(g.pos), np.cumsum(g.pos + g.neg)


def average_precision(g: RankGroups) -> float:
    """AP = Σ (R_k − R_{k−1}) P_k over thresholds (scikit-learn's definition, no interpolation)."""
    P, tp, pp = _cumulative(g)
    if P == 0:
        return float("nan")
    return float(np.sum(np.diff(np.r_[0.0, tp / P]) * (tp / pp)))


def f1_max(g: RankGroups) -> float:
    """Best F1 over all thresholds: max 2·TP / (TP + FP + P)."""
    P, tp, pp = _cumulative(g)
    if P == 0:
        return float("nan")
    return float(np.max(2.0 * tp / (pp + P)))


def pro_curve(g: RankGroups) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, PRO) points from the highest threshold down, starting at (0, 0)."""
    if g.pro is None or g.n_regions == 0:
        raise ValueError("no ground-truth regions: PRO is undefined")
    fpr = np.r_[0.0, np.cumsum(g.neg) / max(g.neg.sum(), 1.0)]
    pro = np.r_[0.0, np.cumsum(g.pro) / g.n_regions]
    return fpr, pro


def _clip_curve(fpr: np.ndarray, pro: np.ndarray, limit: float) -> tuple[np.ndarray, np.ndarray]:
    k = int(np.searchsorted(fpr, limit, side="right"))  # points with fpr <= limit
    x, y = fpr[:k], pro[:k]
    if k < len(fpr) and x[-1] < limit:
        x0, x1, y0, y1 = fpr[k - 1], fpr[k], pro[k - 1], pro[k]
        y_lim = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
        x, y = np.r_[x, limit], np.r_[y, y_lim]
    return x, y


def aupro(g: RankGroups, fpr_limit: float = FPR_LIMIT) -> float:
    """Area under the PRO curve up to `fpr_limit`, divided by `fpr_limit`; NaN without regions."""
    if g.pro is None or g.n_regions == 0 or g.neg.sum() == 0:
        return float("nan")
    x, y = _clip_curve(*pro_curve(g), fpr_limit)
    return float(np.trapezoid(y, x) / fpr_limit)


def aupro_error_bound(g: RankGroups, fpr_limit: float = FPR_LIMIT) -> float:
    """Max |binned AUPRO − exact AUPRO| from the sampled curve (0 when every group is one distinct score)."""
    if g.pro is None or g.n_regions == 0 or g.neg.sum() == 0:
        return float("nan")
    x, y = _clip_curve(*pro_curve(g), fpr_limit)
    return _trapezoid_bound(x, y) / fpr_limit
