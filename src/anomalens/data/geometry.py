"""The image geometry every method shares: how an image of any size becomes model inputs, and how their maps come back.

Four geometries (the `geometry` setting of every model):

- ``"paper"``: the method's own preprocessing (its benchmark numbers; e.g. PatchCore 256 → centre crop 224).
- ``"whole"``: the whole image squashed to the model's input size S × S.
- ``"aspect"``: shorter side → S, aspect kept, no crop. A model that takes any size (a CNN) sees the frame as it is;
  a model with a fixed square input (a ViT) sees S × S tiles across the long side, stride ≤ 0.8 S.
- ``"tiles"``: the image at `scale` × its native resolution, cut into overlapping `tile` × `tile` squares (`overlap`
  pixels shared by neighbours), each resized to the model's input size; the maps are stitched at the frame's size
  with weights that ramp down across each overlap (no seams), and the image score is the method's reduction of the
  tile scores (max for PatchCore: the largest patch score anywhere in the image).

A `Frame` maps an original image to the frame the model scores (an `ImageTransform`: resize, normalisation) and
holds the `Tiler` that cuts the frame into model inputs (None: the frame is the input). Anomaly maps, metrics and
masks live at the frame's resolution; `ImageTransform.map_to_original` brings them back to the image as stored.

``"auto"`` resolves to one of the four from the data (see `auto_geometry`): the benchmarks' own geometry on MVTec AD
and VisA, else aspect for images whose shorter side is within `AUTO_TILE_RATIO` × S, tiles above (rule and evidence:
benchmarks/geometry.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import SettingError
from .transforms import ImageTransform

GEOMETRIES = ("auto", "paper", "whole", "aspect", "tiles")
#: geometry="auto": tiles at native resolution once the image's shorter side exceeds this many times the input size
AUTO_TILE_RATIO = 1.5
#: default overlap of neighbouring tiles, as a fraction of the tile side (SuperADD: 128 px of 640)
DEFAULT_OVERLAP_RATIO = 0.25
#: frames above this many pixels are scored one at a time (tiles geometry): memory follows the image, not the batch
LARGE_FRAME_PIXELS = 4_000_000


def check_geometry(geometry: str, tile: Optional[int] = None, overlap: Optional[int] = None, scale: float = 1.0) -> None:
    """One-line errors for geometry settings (shared by every model)."""
    if geometry not in GEOMETRIES:
        raise SettingError(f"geometry must be one of {', '.join(GEOMETRIES)}, got {geometry!r}")
    if tile is not None and (not isinstance(tile, int) or isinstance(tile, bool) or tile < 8):
        raise SettingError(f"tile must be an integer side of at least 8 pixels (or None = the model's input size), got {tile!r}")
    if overlap is not None and (not isinstance(overlap, int) or isinstance(overlap, bool) or overlap < 0):
        raise SettingError(f"overlap must be a number of pixels >= 0 (or None = a quarter of the tile), got {overlap!r}")
    if tile is not None and overlap is not None and overlap >= tile:
        raise SettingError(f"overlap ({overlap}) must be smaller than the tile ({tile})")
    if not isinstance(scale, (int, float)) or isinstance(scale, bool) or not 0 < scale <= 4:
        raise SettingError(f"scale must be a number in (0, 4], got {scale!r}")


def tile_offsets(length: int, side: int, stride: int) -> list[int]:
    """Offsets of tiles of `side` along `length`: every `stride` pixels from 0, the last clamped to the edge (WinCLIP's
    paper tiling with stride ⌊0.8·side⌋; the tiles geometry with stride side − overlap)."""
    if length <= side:
        return [0]
    stride = max(1, int(stride))
    return sorted(set(list(range(0, length - side, stride)) + [length - side]))


def _ramp(side: int, overlap: int, lead: bool, trail: bool) -> torch.Tensor:
    """1-D blending weight over a tile side: 1 inside, a linear ramp across an overlap shared with a neighbour."""
    w = torch.ones(side)
    if overlap > 0:
        r = (torch.arange(overlap, dtype=torch.float32) + 0.5) / overlap
        if lead:
            w[:overlap] = torch.minimum(w[:overlap], r)
        if trail:
            w[side - overlap:] = torch.minimum(w[side - overlap:], r.flip(0))
    return w


@dataclass(frozen=True)
class Tiler:
    """Cut (B, 3, H, W) frames into square views for the model and stitch the views' maps back.

    tile: view side in frame pixels (None: the frame's shorter side, as WinCLIP's paper tiling); stride: at most
    tile − overlap (`overlap` None: `max_stride_ratio` × tile); input_size: the side the model takes (views are resized
    to it, bilinear/bicubic per `interpolation`; None: as cut); blend: "smooth" (ramps across overlaps) or "uniform"
    (plain average); reduce: how tile scores become the image score ("max" or "mean").
    """

    tile: Optional[int] = None
    overlap: Optional[int] = None
    max_stride_ratio: float = 0.8
    input_size: Optional[int] = None
    interpolation: str = "bilinear"
    blend: str = "smooth"
    reduce: str = "max"

    def side(self, H: int, W: int) -> int:
        """The square view side on an H × W frame (never larger than the frame)."""
        return min(int(self.tile), H, W) if self.tile is not None else min(H, W)

    def _offsets(self, H: int, W: int) -> tuple[int, list[int], list[int]]:
        """(side, tops, lefts) of the views of an H × W frame."""
        s = self.side(H, W)
        stride = (s - min(int(self.overlap), s - 1)) if self.overlap is not None else int(self.max_stride_ratio * s)
        return s, tile_offsets(H, s, stride), tile_offsets(W, s, stride)

    def boxes(self, H: int, W: int) -> list[tuple[int, int, int]]:
        """(top, left, side) of every view of an H × W frame, row-major; together they cover every pixel."""
        s, tops, lefts = self._offsets(H, W)
        return [(t, l, s) for t in tops for l in lefts]

    def weight(self, box: tuple[int, int, int], H: int, W: int) -> torch.Tensor:
        """(side, side) blending weight of one view: ramps only where a neighbour overlaps (never at the frame edge)."""
        t, l, s = box
        if self.blend == "uniform":
            return torch.ones(s, s)
        _, tops, lefts = self._offsets(H, W)
        ov_y = _overlap_with_neighbours(tops, t, s)
        ov_x = _overlap_with_neighbours(lefts, l, s)
        wy = _ramp(s, max(ov_y), ov_y[0] > 0, ov_y[1] > 0)
        wx = _ramp(s, max(ov_x), ov_x[0] > 0, ov_x[1] > 0)
        return wy[:, None] * wx[None, :]

    def views(self, frames: torch.Tensor, boxes: Sequence[tuple[int, int, int]]) -> torch.Tensor:
        """(B·len(boxes), 3, S, S) model inputs, box-major: the views of every frame at box 0, then box 1, ..."""
        crops = torch.cat([frames[..., t:t + s, l:l + s] for t, l, s in boxes])
        s = boxes[0][2]
        if self.input_size is not None and s != self.input_size:
            kw = {} if self.interpolation == "nearest" else {"align_corners": False}
            crops = F.interpolate(crops, size=(self.input_size, self.input_size), mode=self.interpolation, **kw)
        return crops

    def score(self, frames: torch.Tensor, score_views: Callable[[torch.Tensor], tuple], batch_size: int) -> tuple:
        """Score (B, 3, H, W) frames view by view: (scores (B,), maps (B, H, W)[, {component: (B,)}]).

        Views go to `score_views` (model inputs → (scores, maps[, components])) in chunks of about `batch_size`, so
        memory follows one chunk and the frame, not the number of tiles; maps are stitched with `weight`.
        """
        B, _, H, W = frames.shape
        boxes = self.boxes(H, W)
        per_chunk = max(1, int(batch_size) // max(B, 1))
        acc = torch.zeros(B, H, W, dtype=torch.float32)
        norm = torch.zeros(H, W, dtype=torch.float32)
        tile_scores, parts = [], []
        for i in range(0, len(boxes), per_chunk):
            chunk = boxes[i:i + per_chunk]
            out = score_views(self.views(frames, chunk))
            s = torch.as_tensor(np.asarray(out[0], dtype=np.float64)).view(len(chunk), B)
            m = torch.as_tensor(np.asarray(out[1], dtype=np.float32))
            side = chunk[0][2]
            if m.shape[-1] != side or m.shape[-2] != side:
                m = F.interpolate(m[:, None], size=(side, side), mode="bilinear", align_corners=False)[:, 0]
            m = m.view(len(chunk), B, side, side)
            for j, (t, l, _) in enumerate(chunk):
                w = self.weight(chunk[j], H, W)
                acc[:, t:t + side, l:l + side] += m[j] * w
                norm[t:t + side, l:l + side] += w
            tile_scores.append(s)
            if len(out) > 2:
                parts.append({k: torch.as_tensor(np.asarray(v, dtype=np.float64)).view(len(chunk), B) for k, v in out[2].items()})
        scores = torch.cat(tile_scores)  # (n_boxes, B)
        reduce = (lambda x: x.max(0).values) if self.reduce == "max" else (lambda x: x.mean(0))
        result = (reduce(scores).numpy(), (acc / norm.clamp(min=1e-12)).numpy())
        if parts:
            result += ({k: reduce(torch.cat([p[k] for p in parts])).numpy() for k in parts[0]},)
        return result


def _overlap_with_neighbours(starts: list[int], start: int, side: int) -> tuple[int, int]:
    """Pixels this view shares with the previous and the next view along one axis."""
    i = starts.index(start)
    lead = (starts[i - 1] + side - start) if i > 0 else 0
    trail = (start + side - starts[i + 1]) if i + 1 < len(starts) else 0
    return max(lead, 0), max(trail, 0)


@dataclass(frozen=True)
class Frame:
    """A resolved geometry: the transform from image to frame, and the tiler from frame to model inputs (or None)."""

    geometry: str
    transform: ImageTransform
    tiler: Optional[Tiler] = None
    settings: dict = field(default_factory=dict)

    @property
    def large(self) -> bool:
        """Tiles at native resolution: frames are loaded one at a time."""
        return self.geometry == "tiles"


def build_frame(geometry: str, paper: ImageTransform, input_size: Optional[int], size: int, *,
                fixed_input: bool, tile: Optional[int] = None, overlap: Optional[int] = None, scale: float = 1.0,
                paper_tiler: Optional[Tiler] = None, reduce: str = "max") -> Frame:
    """The `Frame` of a resolved geometry for a model.

    paper: the method's own transform (and `paper_tiler`, for methods whose paper tiles, e.g. WinCLIP); input_size:
    the square side a fixed-input model takes (None for any size); size: S for whole/aspect; fixed_input: whether
    views must be square `input_size` crops; tile/overlap/scale: the tiles geometry (tile None = S, overlap None =
    a quarter of the tile); reduce: the method's rule for tile scores.
    """
    check_geometry(geometry, tile, overlap, scale)
    mean, std, interp = paper.mean, paper.std, paper.interpolation
    S = int(size)
    if geometry == "paper":
        return Frame("paper", paper, paper_tiler)
    if geometry == "whole":
        return Frame("whole", ImageTransform((S, S), None, mean, std, interp))
    if geometry == "aspect":
        tiler = None
        if fixed_input:  # square tiles of the shorter side across the long one (the method's own, where it has one)
            tiler = paper_tiler or Tiler(None, None, 0.8, input_size, interp, "smooth", reduce)
        return Frame("aspect", ImageTransform(S, None, mean, std, interp), tiler)
    if geometry == "tiles":
        t = int(tile) if tile is not None else S
        ov = int(overlap) if overlap is not None else int(round(DEFAULT_OVERLAP_RATIO * t))
        # a fixed-input model sees each tile resized to its input; a CNN sees the tile's own pixels
        tiler = Tiler(t, ov, 1.0, input_size if fixed_input else None, interp, "smooth", reduce)
        tf = ImageTransform(None, None, mean, std, interp, scale=None if float(scale) == 1.0 else float(scale))
        return Frame("tiles", tf, tiler, {"tile": t, "overlap": ov, "scale": float(scale)})
    raise SettingError(f"geometry {geometry!r} must be resolved before building a frame (auto → one of paper/whole/aspect/tiles)")


def auto_geometry(dataset_name: Optional[str], first_size: Optional[tuple[int, int]], size: int) -> str:
    """geometry="auto": "paper" on MVTec AD / VisA (the benchmarks' own geometry), else by the images' size: "aspect"
    when the shorter side is at most `AUTO_TILE_RATIO` × S (little resolution to gain), "tiles" above."""
    if dataset_name in ("mvtec", "visa"):
        return "paper"
    if first_size is None:
        return "aspect"
    return "tiles" if min(first_size) > AUTO_TILE_RATIO * int(size) else "aspect"
