"""Robust image and mask reading: any PIL mode in, RGB uint8 / boolean mask out, clear errors naming the file."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
#: smaller images hold no inspectable detail (a 1×1 "image" is usually a broken export): a clear error, not a score
MIN_IMAGE_SIDE = 8


def is_image_file(path: str | os.PathLike) -> bool:
    """True when the file name has an image extension we read."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def _open(path: str | os.PathLike) -> Image.Image:
    path = Path(path)
    if not path.exists():
        raise DataError(f"image not found: {path}")
    if path.is_dir():
        raise DataError(f"expected an image file, got a directory: {path}")
    try:
        img = Image.open(path)
        img.load()  # force decoding so truncated files fail here, not later
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"corrupt or unreadable image {path}: {exc}") from exc
    return img


def _to_uint8_array(img: Image.Image) -> np.ndarray:
    """Deep modes (16-bit, 32-bit int, float) rescaled to 0..255 by their dtype range; others untouched."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        arr = np.asarray(img, dtype=np.uint16).astype(np.float32) / 65535.0
    elif img.mode == "I":
        a = np.asarray(img, dtype=np.int64)
        hi = 65535.0 if a.max(initial=0) > 255 else 255.0
        arr = np.clip(a, 0, hi).astype(np.float32) / hi
    elif img.mode == "F":
        a = np.asarray(img, dtype=np.float32)
        lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
        arr = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
    else:
        return np.asarray(img)
    return np.round(arr * 255.0).astype(np.uint8)


def load_image(path: str | os.PathLike) -> Image.Image:
    """Read any image as 8-bit RGB: grey, RGBA (alpha dropped), palette, 1-bit and 16-bit are converted."""
    return to_rgb(_open(path), path)


def to_rgb(img: Image.Image, path: str | os.PathLike = "<image>") -> Image.Image:
    """A decoded image of any mode as 8-bit RGB (see `load_image`); too-small images are a DataError naming `path`."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        img = Image.fromarray(_to_uint8_array(img), mode="L")
    if img.mode == "RGBA" or img.mode == "LA" or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (0, 0, 0, 255))
        img = Image.alpha_composite(background, img)
    img = img.convert("RGB")
    if img.width < 1 or img.height < 1:
        raise DataError(f"empty image (0 pixels): {path}")
    if min(img.width, img.height) < MIN_IMAGE_SIDE:
        raise DataError(f"image too small to inspect ({img.width}x{img.height} px; at least {MIN_IMAGE_SIDE} px a side): {path}")
    return img


def load_mask(path: str | os.PathLike) -> np.ndarray:
    """Read a ground-truth mask as a boolean (H, W) array: any non-zero pixel is anomalous."""
    img = _open(path)
    if img.mode in ("RGB", "RGBA", "P", "LA"):
        img = img.convert("L")
    arr = np.asarray(img)
    if arr.ndim == 3:
        arr = arr.max(axis=2)
    return arr > 0


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) from the header only, without decoding."""
    try:
        with Image.open(path) as img:
            return img.size
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"corrupt or unreadable image {path}: {exc}") from exc
