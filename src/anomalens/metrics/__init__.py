"""One metric suite for every method: image AUROC/AP/F1-max, pixel AUROC/AP/F1-max, AUPRO (FPR ≤ 0.3)."""
from __future__ import annotations

import math
from typing import Mapping, Optional

import numpy as np

from .curves import FPR_LIMIT
from .image import image_metrics
from .pixel import StreamingPixelMetrics, pixel_metrics, pixel_metrics_binned, pro_musc

IMAGE_KEYS = ("image_auroc", "image_ap", "image_f1max")
PIXEL_KEYS = ("pixel_auroc", "pixel_ap", "pixel_f1max", "aupro")
ALL_KEYS = IMAGE_KEYS + PIXEL_KEYS


def compute(image_scores, image_labels, anomaly_maps=None, masks=None, fpr_limit: float = FPR_LIMIT,
            binned: bool = False, n_bins: int = 65536) -> dict[str, float]:
    """All metrics in one call; pixel keys only when both maps and masks are given.

    binned=True computes pixel metrics from an n_bins histogram (O(bins) memory) and adds the error bounds.
    """
    out = image_metrics(image_scores, image_labels)
    if anomaly_maps is not None and masks is not None:
        if binned:
            out.update(pixel_metrics_binned([anomaly_maps], [masks], n_bins=n_bins, fpr_limit=fpr_limit))
        else:
            out.update(pixel_metrics(anomaly_maps, masks, fpr_limit))
    elif (anomaly_maps is None) != (masks is None):
        raise ValueError("pass both anomaly_maps and masks for pixel metrics, or neither")
    return out


def mean_row(per_category: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Unweighted mean over categories of each metric (NaNs ignored; NaN when all are NaN)."""
    keys = [k for k in ALL_KEYS if any(k in v for v in per_category.values())]
    out = {}
    for k in keys:
        vals = [float(v[k]) for v in per_category.values() if k in v and not math.isnan(float(v[k]))]
        out[k] = float(np.mean(vals)) if vals else float("nan")
    return out


def table(per_category: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """Per-category rows plus a 'mean' row."""
    rows = {c: dict(v) for c, v in per_category.items()}
    if len(rows) > 0:
        rows["mean"] = mean_row(per_category)
    return rows


__all__ = ["compute", "table", "mean_row", "image_metrics", "pixel_metrics", "pixel_metrics_binned",
           "StreamingPixelMetrics", "pro_musc", "ALL_KEYS", "IMAGE_KEYS", "PIXEL_KEYS", "FPR_LIMIT"]
