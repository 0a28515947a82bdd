"""Ground-truth regions for PRO: 8-connected components of each mask, weighted 1/|r|."""
from __future__ import annotations

import numpy as np
from scipy import ndimage

EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def positive_region_weights(masks: np.ndarray) -> tuple[np.ndarray, int]:
    """Weights 1/|r| of the positive pixels of an (N, H, W) mask stack, in C order (= `masks[masks]`), and the region count."""
    parts, total = [], 0
    for m in masks:
        if not m.any():
            continue
        labels, n = ndimage.label(m, structure=EIGHT_CONNECTED)
        sizes = np.bincount(labels.ravel()).astype(np.float64)
        parts.append(1.0 / sizes[labels[m]])
        total += n
    return (np.concatenate(parts) if parts else np.zeros(0)), total
