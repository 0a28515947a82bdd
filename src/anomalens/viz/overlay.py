"""Heat-map overlays rendered with numpy + Pillow (no plotting dependency)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image
from scipy import ndimage

# A perceptually ordered blue -> cyan -> yellow -> red ramp (jet-like anchors).
_ANCHORS = np.array([[0.0, 0.0, 0.5], [0.0, 0.3, 1.0], [0.0, 0.9, 0.9], [1.0, 1.0, 0.0], [1.0, 0.4, 0.0], [0.6, 0.0, 0.0]])


def colorize(values: np.ndarray, vmin: float, vmax: float) -> np.ndarray:
    """Map (H, W) scores to (H, W, 3) float RGB in [0, 1] with scores clipped to [vmin, vmax]."""
    span = vmax - vmin if vmax > vmin else 1.0
    t = np.clip((np.asarray(values, dtype=np.float64) - vmin) / span, 0, 1) * (len(_ANCHORS) - 1)
    lo = np.floor(t).astype(int).clip(0, len(_ANCHORS) - 2)
    frac = (t - lo)[..., None]
    return _ANCHORS[lo] * (1 - frac) + _ANCHORS[lo + 1] * frac


def overlay(image: np.ndarray, anomaly_map: np.ndarray, vmin: float, vmax: float, mask: Optional[np.ndarray] = None,
            alpha: float = 0.5) -> np.ndarray:
    """Blend the heat map over an (H, W, 3) image in [0, 1]; draw the ground-truth contour in green."""
    img = np.asarray(image, dtype=np.float64)
    if img.shape[:2] != anomaly_map.shape:
        raise ValueError(f"image {img.shape[:2]} and map {anomaly_map.shape} differ in size")
    out = (1 - alpha) * img + alpha * colorize(anomaly_map, vmin, vmax)
    if mask is not None and np.any(mask):
        m = np.asarray(mask, dtype=bool)
        edge = m & ~ndimage.binary_erosion(m, iterations=1, border_value=0)
        edge = ndimage.binary_dilation(edge, iterations=1)
        out[edge] = (0.1, 1.0, 0.2)
    return np.clip(out, 0, 1)


def save_overlay(path: str | os.PathLike, image: np.ndarray, anomaly_map: np.ndarray, vmin: float, vmax: float,
                 mask: Optional[np.ndarray] = None, score: Optional[float] = None) -> Path:
    """Write image | overlay side by side as PNG; returns the path."""
    img = np.asarray(image, dtype=np.float64)
    ov = overlay(img, anomaly_map, vmin, vmax, mask)
    canvas = np.concatenate([img, np.ones((img.shape[0], 4, 3)), ov], axis=1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((canvas * 255 + 0.5).astype(np.uint8)).save(path)
    return path
