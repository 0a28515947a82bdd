"""Deterministic synthetic inspection data in the MVTec AD layout: procedural normals, pasted defects, exact masks.

`make_synthetic_dataset(root, seed=0)` writes <root>/<category>/{train/good, test/<defect>, ground_truth/<defect>}.
Every image is a function of (seed, category, split, defect, index) only, so the same call writes the same bytes.
"""
from __future__ import annotations

import zlib
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
from PIL import Image
from scipy import ndimage

from ..progress import track

CATEGORIES = ("weave", "grain", "disc")
DEFECTS = ("scratch", "hole", "stain", "color_spot", "missing")


def _rng(*key: object) -> np.random.Generator:
    return np.random.default_rng([zlib.crc32(str(k).encode()) for k in key])


# ---------------------------------------------------------------- normals
def _weave(rng: np.random.Generator, s: int) -> np.ndarray:
    y, x = np.mgrid[0:s, 0:s].astype(np.float32)
    period = 16.0
    px, py = rng.uniform(0, period, size=2)
    a = np.sin(2 * np.pi * (x + px) / period) * np.sin(2 * np.pi * (y + py) / period)
    base = np.array([0.55, 0.5, 0.42]) + rng.normal(0, 0.015, 3)
    img = base[None, None, :] + 0.18 * a[..., None] + rng.normal(0, 0.02, (s, s, 1))
    return img


def _grain(rng: np.random.Generator, s: int) -> np.ndarray:
    y, x = np.mgrid[0:s, 0:s].astype(np.float32)
    warp = ndimage.gaussian_filter(rng.normal(0, 1, (s, s)), 12) * 60
    rings = np.sin(2 * np.pi * (y + warp + rng.uniform(0, 100)) / 11.0)
    base = np.array([0.62, 0.45, 0.28]) + rng.normal(0, 0.015, 3)
    img = base[None, None, :] * (0.85 + 0.15 * rings[..., None]) + rng.normal(0, 0.015, (s, s, 1))
    return img


def _disc(rng: np.random.Generator, s: int) -> np.ndarray:
    y, x = np.mgrid[0:s, 0:s].astype(np.float32)
    cy, cx = s / 2 + rng.uniform(-3, 3, size=2)
    r = np.hypot(y - cy, x - cx)
    outer, inner = 0.36 * s, 0.12 * s
    body = (r < outer) & (r > inner)
    shade = 0.55 + 0.25 * (1 - r / outer) + 0.05 * np.cos(np.arctan2(y - cy, x - cx) * 6)
    bg = np.array([0.12, 0.14, 0.16]) + rng.normal(0, 0.01, 3)
    img = np.broadcast_to(bg, (s, s, 3)).copy()
    metal = np.array([0.75, 0.75, 0.8])[None, :] * shade[body][:, None]
    img[body] = metal
    img += rng.normal(0, 0.015, (s, s, 1))
    return img


_NORMALS: dict[str, Callable[[np.random.Generator, int], np.ndarray]] = {"weave": _weave, "grain": _grain, "disc": _disc}


# ---------------------------------------------------------------- defects
def _defect_centre(rng: np.random.Generator, category: str, s: int) -> tuple[float, float]:
    if category == "disc":  # on the ring of the object
        ang, rad = rng.uniform(0, 2 * np.pi), rng.uniform(0.17, 0.31) * s
        return s / 2 + rad * np.sin(ang), s / 2 + rad * np.cos(ang)
    lo, hi = 0.2 * s, 0.8 * s  # inside a 256 -> 224 centre crop
    return tuple(rng.uniform(lo, hi, size=2))  # type: ignore[return-value]


def _blob(rng: np.random.Generator, s: int, cy: float, cx: float, radius: float) -> np.ndarray:
    y, x = np.mgrid[0:s, 0:s].astype(np.float32)
    noise = ndimage.gaussian_filter(rng.normal(0, 1, (s, s)), radius / 3) * radius * 1.5
    return np.hypot(y - cy, x - cx) + noise < radius


def _apply_defect(img: np.ndarray, defect: str, category: str, rng: np.random.Generator, normal_gen) -> np.ndarray:
    s = img.shape[0]
    cy, cx = _defect_centre(rng, category, s)
    y, x = np.mgrid[0:s, 0:s].astype(np.float32)
    if defect == "scratch":
        ang = rng.uniform(0, np.pi)
        length, width = rng.uniform(0.12, 0.25) * s, rng.uniform(1.5, 3.0)
        dy, dx = np.sin(ang), np.cos(ang)
        along = (y - cy) * dy + (x - cx) * dx
        across = -(y - cy) * dx + (x - cx) * dy
        mask = (np.abs(along) < length / 2) & (np.abs(across) < width)
        img[mask] = rng.choice([0.05, 0.95]) + rng.normal(0, 0.02, (int(mask.sum()), 1))
    elif defect == "hole":
        radius = rng.uniform(0.025, 0.05) * s
        r = np.hypot(y - cy, x - cx)
        mask = r < radius
        img[mask] = 0.03 + 0.05 * (r[mask] / radius)[:, None]
    elif defect == "stain":
        mask = _blob(rng, s, cy, cx, rng.uniform(0.04, 0.08) * s)
        tint = np.array([0.35, 0.25, 0.1]) + rng.normal(0, 0.03, 3)
        img[mask] = 0.45 * img[mask] + 0.55 * tint
    elif defect == "color_spot":
        ry, rx = rng.uniform(0.02, 0.045, size=2) * s
        mask = ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 < 1
        colour = np.eye(3)[rng.integers(0, 3)] * 0.8 + 0.1
        img[mask] = colour
    elif defect == "missing":
        size = rng.uniform(0.07, 0.12) * s
        mask = (np.abs(y - cy) < size / 2) & (np.abs(x - cx) < size * rng.uniform(0.4, 0.8))
        if category == "disc":
            bg = img[2:8, 2:8].reshape(-1, 3).mean(0)
            img[mask] = bg
        else:  # texture: a patch of the pattern shifted out of phase
            other = normal_gen(rng, s)
            shifted = np.roll(other, (int(rng.integers(3, 7)), int(rng.integers(3, 7))), axis=(0, 1))
            img[mask] = shifted[mask] * 0.8
    else:
        raise ValueError(f"unknown synthetic defect {defect!r}; choose from {DEFECTS}")
    return mask


def _to_png(arr: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.clip(arr, 0, 1) * 255 + 0.5).astype(np.uint8)).save(path)


def make_synthetic_image(category: str, seed: int, split: str, index: int, defect: Optional[str] = None, size: int = 256):
    """One (image float (S,S,3), mask bool (S,S)) pair; `defect=None` gives a normal image with an empty mask."""
    if category not in _NORMALS:
        raise ValueError(f"unknown synthetic category {category!r}; choose from {CATEGORIES}")
    rng = _rng(seed, category, split, defect or "good", index)
    img = _NORMALS[category](rng, size).astype(np.float64)
    mask = np.zeros((size, size), dtype=bool)
    if defect is not None:
        mask = _apply_defect(img, defect, category, rng, _NORMALS[category])
    return np.clip(img, 0, 1), mask


def make_synthetic_dataset(
    root: str | Path,
    categories: Sequence[str] = CATEGORIES,
    defects: Sequence[str] = DEFECTS,
    n_train: int = 20,
    n_test_good: int = 6,
    n_test_per_defect: int = 3,
    size: int = 256,
    seed: int = 0,
) -> Path:
    """Write a deterministic MVTec-layout dataset under `root`; returns `root`."""
    root = Path(root)
    jobs = []
    for cat in categories:
        jobs += [(cat, "train", None, i) for i in range(n_train)]
        jobs += [(cat, "test", None, i) for i in range(n_test_good)]
        for d in defects:
            jobs += [(cat, "test", d, i) for i in range(n_test_per_defect)]
    for cat, split, defect, i in track(jobs, "writing synthetic data"):
        img, mask = make_synthetic_image(cat, seed, split, i, defect, size)
        folder = "good" if defect is None else defect
        _to_png(img, root / cat / split / folder / f"{i:03d}.png")
        if defect is not None:
            mp = root / cat / "ground_truth" / defect / f"{i:03d}_mask.png"
            mp.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(mask.astype(np.uint8) * 255).save(mp)
    return root
