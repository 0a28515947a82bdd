"""Overlay files: one per image, named so two inputs never collide, coloured on a scale that means the same thing on
every image of a model (whatever the batch, the runner or the other images scored with it).

Names: the image's path relative to the common root of the inputs (`overlay_root`), folders joined with "__",
".png" appended ("hazelnut/test/good/000.png" -> "hazelnut__test__good__000.png"; "a/000.jpg" -> "a__000.jpg.png").
A name that could be read two ways (a folder or file name holding "__") gets a short hash of its relative path.

Colours: a calibrated model's maps all use one fixed scale recorded at calibrate time (`calibration_["map_scale"]`:
the median pixel of its normal calibration maps at the bottom, the threshold marked, the top above it); a model without
one is coloured per image, and the overlay says so.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

import numpy as np

PathLike = Union[str, os.PathLike]
PER_IMAGE_NOTE = "colours: this image's own range (uncalibrated model)"


def _static_dir(item: str) -> str:
    """The folder an input argument names: itself (a folder), its parent (a file), the non-pattern prefix (a glob)."""
    if any(ch in item for ch in "*?[") and not os.path.exists(item):
        parts = Path(item).parts
        fixed = []
        for part in parts:
            if any(ch in part for ch in "*?["):
                break
            fixed.append(part)
        return os.path.join(*fixed) if fixed else "."
    return item if os.path.isdir(item) else (os.path.dirname(item) or ".")


def overlay_root(items: Union[PathLike, Sequence[PathLike]]) -> Path:
    """The common folder of the input arguments (folders, files, glob patterns): overlay names are relative to it."""
    items = [items] if isinstance(items, (str, os.PathLike)) else list(items)
    dirs = [os.path.abspath(_static_dir(str(i))) for i in items] or [os.path.abspath(".")]
    return Path(os.path.commonpath(dirs))


def overlay_name(path: PathLike, root: PathLike) -> str:
    """File name of the overlay of `path` (see the module doc): unique for distinct paths under `root`."""
    p = os.path.abspath(str(path))
    rel = os.path.relpath(p, os.path.abspath(str(root)))
    parts = list(Path(rel).parts)
    if rel.startswith("..") or len(parts) < 2:  # outside the root, or directly in it: keep its folder's name
        parts = list(Path(p).parts[-2:])
    name = "__".join(parts)
    base, ext = os.path.splitext(name)
    name = base if ext.lower() == ".png" else name
    if any("__" in part for part in parts):
        name += "-" + hashlib.sha1(rel.encode()).hexdigest()[:8]
    return name + ".png"


@dataclasses.dataclass
class OverlayWriter:
    """Where and how one run draws its overlays: `out_dir`, the inputs' common `root`, the model's colour `scale`
    (None: per image). `path_for(image)` is the overlay's path, also written in the prediction rows."""

    out_dir: Path
    root: Path
    scale: Optional[dict] = None

    def path_for(self, image_path: PathLike) -> Path:
        return Path(self.out_dir) / overlay_name(image_path, self.root)

    def __call__(self, pred, transform=None, limit: int = 0) -> list[Path]:
        return write_overlays(pred, transform, self.out_dir, limit=limit, root=self.root, scale=self.scale)


def map_scale(normal_maps: np.ndarray, threshold: Optional[float], quantile: float = 0.999) -> Optional[dict]:
    """The fixed colour scale of a calibrated model from its normal calibration maps: low = their median pixel,
    the threshold marked, high = the larger of their `quantile` pixel and threshold + half of (threshold − low)."""
    v = np.asarray(normal_maps, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0 or threshold is None or not np.isfinite(threshold):
        return None
    low, q = float(np.median(v)), float(np.quantile(v, quantile))
    thr = float(threshold)
    high = max(q, thr + 0.5 * (thr - low)) if thr > low else max(q, low + 1e-6)
    return {"low": low, "high": float(high), "threshold": thr,
            "rule": f"median of normal calibration pixels -> threshold -> max(q{quantile:g} of them, threshold + 50%)"}


def write_overlays(pred, transform=None, out_dir: PathLike = Path("overlays"), limit: int = 0,
                   root: Optional[PathLike] = None, scale: Optional[dict] = None) -> list[Path]:
    """Save one overlay PNG per image: the whole original image, its heat map at the original size (grey where the
    model saw nothing), score, verdict against the threshold, a random-init note when it applies, and a colour bar.

    Colours: `scale` (a calibrated model's `calibration_["map_scale"]`) for every image, the threshold marked on the
    bar; without one, each image's own range (and the overlay says so). An image's overlay never depends on the
    other images of its batch. Names: `overlay_name(path, root)` (root: the images' common folder by default).
    The prediction's own geometry is used; `transform` stands in for it when the prediction was assembled without
    one (e.g. by the streaming predict), the original sizes then read from the image files."""
    from .. import viz as _viz  # looked up at call time (tests stand in for save_overlay)
    from ..data import load_image

    if not pred.paths or pred.paths[0].startswith("<tensor"):  # in-memory images have no file to draw on
        return []
    out_dir = Path(out_dir)
    root = overlay_root(pred.paths) if root is None else Path(root)
    note = "random-init backbone" if pred.info.get("random_init") else ""
    written = []
    n = len(pred) if limit <= 0 else min(limit, len(pred))
    if (pred.original_sizes is None or pred.geometry is None) and transform is not None:
        pred = dataclasses.replace(pred, original_sizes=[None] * len(pred), geometry=transform)
    for i in range(n):
        img = np.asarray(load_image(pred.paths[i]), dtype=np.float32) / 255.0
        if pred.original_sizes is not None and pred.original_sizes[i] is None:
            pred.original_sizes[i] = tuple(img.shape[:2])
        amap = pred.map_at_original_size(i)
        if scale is not None:
            vmin, vmax, mark, extra = float(scale["low"]), float(scale["high"]), scale.get("threshold"), ""
        else:
            finite = amap[np.isfinite(amap)]
            vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
            mark, extra = None, PER_IMAGE_NOTE
        written.append(_viz.save_overlay(out_dir / overlay_name(pred.paths[i], root), img, amap, vmin, vmax,
                                    pred.mask_at_original_size(i), float(pred.image_scores[i]), pred.threshold,
                                    "; ".join(t for t in (note, extra) if t), mark=mark))
    return written


def overlay_paths(paths: Iterable[str], out_dir: PathLike, root: PathLike) -> list[str]:
    """The overlay path of each image path (as the rows record it)."""
    return [str(Path(out_dir) / overlay_name(p, root)) for p in paths]
