"""Image transforms: resize (shorter side, squash or a scale), center crop, normalisation; masks follow the same geometry.

Which transform a model uses is the shared geometry layer's choice (`anomalens.data.geometry`)."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

_INTERP = {
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
    "nearest": InterpolationMode.NEAREST,
}


@dataclass(frozen=True)
class ImageTransform:
    """resize: int = shorter side (aspect kept) or (H, W) = squash; crop: center crop size or None; scale: with
    resize None, a factor on the native size (the tiles geometry at a given `scale`; None = native)."""

    resize: Union[int, Sequence[int], None] = 256
    crop: Optional[int] = 224
    mean: Sequence[float] = IMAGENET_MEAN
    std: Sequence[float] = IMAGENET_STD
    interpolation: str = "bilinear"
    scale: Optional[float] = None

    def __post_init__(self) -> None:
        if self.interpolation not in _INTERP:
            raise ValueError(f"interpolation must be one of {sorted(_INTERP)}, got {self.interpolation!r}")
        if isinstance(self.resize, (list, tuple)):
            object.__setattr__(self, "resize", tuple(int(v) for v in self.resize))

    @property
    def output_size(self) -> Optional[tuple[int, int]]:
        """(H, W) of every output when it does not depend on the input, else None."""
        if self.crop is not None:
            return (int(self.crop), int(self.crop))
        if isinstance(self.resize, tuple):
            return self.resize  # type: ignore[return-value]
        return None

    def to_dict(self) -> dict:
        """JSON-ready settings."""
        d = asdict(self)
        if d["scale"] is None:
            del d["scale"]  # the form saved before `scale` existed
        d["mean"], d["std"] = list(self.mean), list(self.std)
        if isinstance(self.resize, tuple):
            d["resize"] = list(self.resize)
        return d

    def _geometry(self, img: torch.Tensor, mode: InterpolationMode, antialias: bool) -> torch.Tensor:
        if self.resize is not None:
            size = list(self.resize) if isinstance(self.resize, tuple) else int(self.resize)
            img = TF.resize(img, size, interpolation=mode, antialias=antialias)
        elif self.scale is not None:
            img = TF.resize(img, list(self.resized_size(tuple(img.shape[-2:]))), interpolation=mode, antialias=antialias)
        if self.crop is not None:
            img = TF.center_crop(img, [int(self.crop), int(self.crop)])
        return img

    def image(self, image: Union[Image.Image, torch.Tensor, np.ndarray]) -> torch.Tensor:
        """PIL RGB image or (3, H, W) float tensor in [0, 1] -> normalised (3, h, w) float32 tensor."""
        if isinstance(image, Image.Image):
            t = TF.pil_to_tensor(image.convert("RGB")).float().div_(255.0)
        else:
            t = torch.as_tensor(image).float()
            if t.ndim == 2:
                t = t.unsqueeze(0)
            if t.ndim != 3 or t.shape[0] not in (1, 3):
                raise ValueError(f"image tensor must be (3, H, W) or (1, H, W) in [0, 1], got shape {tuple(t.shape)}")
            if t.shape[0] == 1:
                t = t.expand(3, -1, -1)
        t = self._geometry(t, _INTERP[self.interpolation], antialias=True).clamp_(0.0, 1.0)
        return TF.normalize(t, list(self.mean), list(self.std))

    def mask(self, mask: Union[np.ndarray, torch.Tensor]) -> torch.Tensor:
        """Boolean (H, W) mask -> boolean mask with the image's geometry (nearest resize, crop, > 0.5)."""
        m = torch.as_tensor(np.asarray(mask, dtype=np.float32))[None]
        m = self._geometry(m, InterpolationMode.NEAREST, antialias=False)
        return m[0] > 0.5

    def resized_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """(H, W) after the resize step for an input of `size` (torchvision's shorter-side rule)."""
        h, w = size
        if self.resize is None:
            if self.scale is not None:
                return max(1, int(round(h * self.scale))), max(1, int(round(w * self.scale)))
            return h, w
        if isinstance(self.resize, tuple):
            return self.resize  # type: ignore[return-value]
        s = int(self.resize)
        if h <= w:
            return s, int(s * w / h)
        return int(s * h / w), s

    def footprint(self, size: tuple[int, int]) -> tuple[float, float, float, float]:
        """(top, left, bottom, right) in original pixel coordinates of what the model sees of an image of `size`
        (the whole image without a crop; the centre crop's preimage with one)."""
        H, W = size
        h1, w1 = self.resized_size(size)
        if self.crop is None:
            return 0.0, 0.0, float(H), float(W)
        c = int(self.crop)
        top, left = int(round((h1 - c) / 2.0)), int(round((w1 - c) / 2.0))  # as torchvision's center_crop
        sy, sx = H / h1, W / w1
        return top * sy, left * sx, (top + c) * sy, (left + c) * sx

    def map_to_original(self, amap: Union[np.ndarray, torch.Tensor], size: tuple[int, int], mode: str = "bilinear") -> np.ndarray:
        """Undo the geometry of a (h, w) map made at model resolution: an (H, W) float32 map over the original image,
        NaN where the model saw nothing (outside a centre crop)."""
        H, W = int(size[0]), int(size[1])
        m = torch.as_tensor(np.asarray(amap, dtype=np.float32))
        top, left, bottom, right = (int(round(v)) for v in self.footprint((H, W)))
        if (top, left, bottom, right) == (0, 0, H, W):
            return _interp(m, (H, W), mode)
        out = np.full((H, W), np.nan, dtype=np.float32)
        if bottom - top < 1 or right - left < 1:
            return out
        region = _interp(m, (bottom - top, right - left), mode)
        y0, x0 = max(top, 0), max(left, 0)
        y1, x1 = min(bottom, H), min(right, W)
        out[y0:y1, x0:x1] = region[y0 - top : y1 - top, x0 - left : x1 - left]
        return out

    def denormalize(self, t: torch.Tensor) -> torch.Tensor:
        """Inverse of the normalisation, clamped to [0, 1] (for overlays)."""
        mean = torch.tensor(self.mean, dtype=t.dtype, device=t.device).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=t.dtype, device=t.device).view(-1, 1, 1)
        return (t * std + mean).clamp(0.0, 1.0)


def _interp(m: torch.Tensor, size: tuple[int, int], mode: str) -> np.ndarray:
    if tuple(m.shape) == tuple(size):
        return m.numpy().copy()
    kw = {"align_corners": False} if mode == "bilinear" else {}
    return F.interpolate(m[None, None], size=size, mode=mode, **kw)[0, 0].numpy()


def resize_map(maps: torch.Tensor, size: tuple[int, int], mode: str = "bilinear", align_corners: bool = False) -> torch.Tensor:
    """(N, h, w) score maps -> (N, H, W) by interpolation (shared by every method)."""
    return F.interpolate(maps[:, None].float(), size=size, mode=mode, align_corners=align_corners)[:, 0]
