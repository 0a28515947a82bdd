"""Per-method image geometry: resize (shorter side or squash), center crop, normalisation; masks follow the same geometry."""
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
    """resize: int = shorter side (aspect kept) or (H, W) = squash; crop: center crop size or None."""

    resize: Union[int, Sequence[int], None] = 256
    crop: Optional[int] = 224
    mean: Sequence[float] = IMAGENET_MEAN
    std: Sequence[float] = IMAGENET_STD
    interpolation: str = "bilinear"

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
        d["mean"], d["std"] = list(self.mean), list(self.std)
        if isinstance(self.resize, tuple):
            d["resize"] = list(self.resize)
        return d

    def _geometry(self, img: torch.Tensor, mode: InterpolationMode, antialias: bool) -> torch.Tensor:
        if self.resize is not None:
            size = list(self.resize) if isinstance(self.resize, tuple) else int(self.resize)
            img = TF.resize(img, size, interpolation=mode, antialias=antialias)
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

    def denormalize(self, t: torch.Tensor) -> torch.Tensor:
        """Inverse of the normalisation, clamped to [0, 1] (for overlays)."""
        mean = torch.tensor(self.mean, dtype=t.dtype, device=t.device).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=t.dtype, device=t.device).view(-1, 1, 1)
        return (t * std + mean).clamp(0.0, 1.0)


def resize_map(maps: torch.Tensor, size: tuple[int, int], mode: str = "bilinear", align_corners: bool = False) -> torch.Tensor:
    """(N, h, w) score maps -> (N, H, W) by interpolation (shared by every method)."""
    return F.interpolate(maps[:, None].float(), size=size, mode=mode, align_corners=align_corners)[:, 0]
