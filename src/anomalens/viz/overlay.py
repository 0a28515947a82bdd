"""Heat-map overlays rendered with numpy + Pillow (no plotting dependency).

`save_overlay` writes what a person needs to act on one image: a header with its score and the verdict against the
threshold, the whole original image, the heat map over it (areas the model did not see left grey), and a colour bar.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

# A perceptually ordered blue -> cyan -> yellow -> red ramp (jet-like anchors).
_ANCHORS = np.array([[0.0, 0.0, 0.5], [0.0, 0.3, 1.0], [0.0, 0.9, 0.9], [1.0, 1.0, 0.0], [1.0, 0.4, 0.0], [0.6, 0.0, 0.0]])
GAP = 4  # white pixels between panels
MIN_PANEL_WIDTH = 200  # small images are enlarged by a whole factor (nearest) so the header text fits
MAX_PANEL_SIDE = 1024  # large ones are reduced to this longest side
VERDICT_COLOURS = {True: (200, 30, 30), False: (30, 140, 60), None: (90, 90, 90)}


def colorize(values: np.ndarray, vmin: float, vmax: float) -> np.ndarray:
    """Map (H, W) scores to (H, W, 3) float RGB in [0, 1] with scores clipped to [vmin, vmax]."""
    span = vmax - vmin if vmax > vmin else 1.0
    t = np.clip((np.nan_to_num(np.asarray(values, dtype=np.float64), nan=vmin) - vmin) / span, 0, 1) * (len(_ANCHORS) - 1)
    lo = np.floor(t).astype(int).clip(0, len(_ANCHORS) - 2)
    frac = (t - lo)[..., None]
    return _ANCHORS[lo] * (1 - frac) + _ANCHORS[lo + 1] * frac


def overlay(image: np.ndarray, anomaly_map: np.ndarray, vmin: float, vmax: float, mask: Optional[np.ndarray] = None,
            alpha: float = 0.5) -> np.ndarray:
    """Blend the heat map over an (H, W, 3) image in [0, 1]; NaN map pixels (not seen by the model) are shown grey and
    dimmed; the ground-truth contour is drawn in green."""
    img = np.asarray(image, dtype=np.float64)
    amap = np.asarray(anomaly_map, dtype=np.float64)
    if img.shape[:2] != amap.shape:
        raise ValueError(f"image {img.shape[:2]} and map {amap.shape} differ in size")
    out = (1 - alpha) * img + alpha * colorize(amap, vmin, vmax)
    unseen = np.isnan(amap)
    if unseen.any():
        out[unseen] = 0.35 + 0.3 * img[unseen].mean(-1, keepdims=True)
    if mask is not None and np.any(mask):
        m = np.asarray(mask, dtype=bool)
        edge = m & ~ndimage.binary_erosion(m, iterations=1, border_value=0)
        edge = ndimage.binary_dilation(edge, iterations=1)
        out[edge] = (0.1, 1.0, 0.2)
    return np.clip(out, 0, 1)


def panel_size(height: int, width: int) -> tuple[int, int]:
    """(h, w) at which an image of (height, width) is drawn: aspect kept; small images enlarged by a whole factor,
    large ones reduced to MAX_PANEL_SIDE."""
    if max(height, width) > MAX_PANEL_SIDE:
        f = MAX_PANEL_SIDE / max(height, width)
        return max(1, round(height * f)), max(1, round(width * f))
    k = max(1, math.ceil(MIN_PANEL_WIDTH / width))
    return height * k, width * k


def verdict_text(score: Optional[float], threshold: Optional[float]) -> tuple[str, Optional[bool]]:
    """Header line and verdict (True = anomalous, None = no threshold)."""
    if score is None:
        return "", None
    if threshold is None:
        return f"score {score:.4g} - no threshold set", None
    anomalous = bool(score > threshold)
    word = "ANOMALOUS" if anomalous else "normal"
    return f"{word}: score {score:.4g} {'>' if anomalous else '<='} threshold {threshold:.4g}", anomalous


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType sizing
        return ImageFont.load_default()


def _resize(arr: np.ndarray, size: tuple[int, int], nearest: bool) -> np.ndarray:
    if arr.shape[:2] == size:
        return arr
    if size[0] >= arr.shape[0] and size[0] % arr.shape[0] == 0 and size[1] % arr.shape[1] == 0:
        k = size[0] // arr.shape[0]
        return arr.repeat(k, 0).repeat(k, 1)  # whole-factor enlargement: every original pixel kept exactly
    if arr.dtype == bool or nearest:
        im = Image.fromarray(arr.astype(np.uint8) * 255 if arr.dtype == bool else arr)
        out = np.asarray(im.resize(size[::-1], Image.NEAREST))
        return out > 127 if arr.dtype == bool else out
    chans = arr if arr.ndim == 3 else arr[..., None]
    out = np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(chans[..., c], dtype=np.float32)).resize(size[::-1], Image.BILINEAR))
                    for c in range(chans.shape[-1])], -1)
    return out if arr.ndim == 3 else out[..., 0]


def render_overlay(image: np.ndarray, anomaly_map: np.ndarray, vmin: float, vmax: float, mask: Optional[np.ndarray] = None,
                   score: Optional[float] = None, threshold: Optional[float] = None, note: str = "",
                   mark: Optional[float] = None) -> np.ndarray:
    """(H', W', 3) uint8 canvas: header (score, verdict, `note` e.g. 'random-init backbone') over
    [image | overlay | colour bar with its range]; `mark` (the threshold of a fixed scale) is drawn on the bar; then the top
    label reads "vmax+": higher values share the top colour."""
    img = np.asarray(image, dtype=np.float64)
    amap = np.asarray(anomaly_map, dtype=np.float64)
    if img.shape[:2] != amap.shape:
        raise ValueError(f"image {img.shape[:2]} and map {amap.shape} differ in size")
    ph, pw = panel_size(*img.shape[:2])
    img_p = _resize(img.astype(np.float32), (ph, pw), nearest=False).astype(np.float64)
    map_p = _resize(amap.astype(np.float32), (ph, pw), nearest=False).astype(np.float64)
    mask_p = _resize(np.asarray(mask, dtype=bool), (ph, pw), nearest=True) if mask is not None else None
    ov = overlay(img_p, map_p, vmin, vmax, mask_p)
    text_px = max(12, min(ph, pw) // 14)
    font = _font(text_px)
    label_w = int(text_px * 4.5)
    bar_w = max(10, pw // 20)
    header = text_px + 10 if score is not None else 0
    H, W = header + ph, 2 * pw + 2 * GAP + bar_w + label_w
    canvas = np.full((H, W, 3), 255, dtype=np.uint8)
    canvas[header:, :pw] = (img_p * 255 + 0.5).clip(0, 255).astype(np.uint8)
    canvas[header:, pw + GAP : 2 * pw + GAP] = (ov * 255 + 0.5).astype(np.uint8)
    ramp = colorize(np.linspace(vmax, vmin, ph)[:, None].repeat(bar_w, 1), vmin, vmax)
    x_bar = 2 * pw + 2 * GAP
    canvas[header:, x_bar : x_bar + bar_w] = (ramp * 255 + 0.5).astype(np.uint8)
    text, verdict = verdict_text(score, threshold)
    text = f"{text}  [{note}]" if note and text else text
    if header:
        canvas[:header] = VERDICT_COLOURS[verdict]
    pil = Image.fromarray(canvas)
    draw = ImageDraw.Draw(pil)
    if header:
        draw.text((6, 4), text, fill=(255, 255, 255), font=font)
    top = f"{vmax:.3g}" + ("+" if mark is not None else "")  # a fixed scale clips: "+" = this colour and above
    draw.text((x_bar + bar_w + 3, header), top, fill=(0, 0, 0), font=font)
    if mark is not None and vmax > vmin and vmin <= mark <= vmax:
        y = header + int(round((vmax - mark) / (vmax - vmin) * (ph - 1)))
        draw.line([(x_bar - 2, y), (x_bar + bar_w + 2, y)], fill=(0, 0, 0), width=max(1, text_px // 8))
        if header + text_px + 2 < y < H - 2 * text_px - 2:
            draw.text((x_bar + bar_w + 3, y - text_px // 2), f"thr {mark:.3g}", fill=(0, 0, 0), font=font)
    draw.text((x_bar + bar_w + 3, H - text_px - 2), f"{vmin:.3g}", fill=(0, 0, 0), font=font)
    return np.asarray(pil)


def save_overlay(path: str | os.PathLike, image: np.ndarray, anomaly_map: np.ndarray, vmin: float, vmax: float,
                 mask: Optional[np.ndarray] = None, score: Optional[float] = None, threshold: Optional[float] = None,
                 note: str = "", mark: Optional[float] = None) -> Path:
    """Write `render_overlay(...)` as PNG (image and map at the image's original size); returns the path."""
    from ..outputs import guard_replace, record_written

    path = Path(path)
    guard_replace(path)  # under a CLI command: never over a user's file
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(render_overlay(image, anomaly_map, vmin, vmax, mask, score, threshold, note, mark)).save(path)
    record_written([path])
    return path
