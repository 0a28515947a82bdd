"""The DINOv2 backbones AnomalyDINO uses (spec §1.2, §4.2): timm names (or the hub's), seeded random init, the
released checkpoint by tag, or a local state-dict file (hub `.pth` or timm `.safetensors`, the released 37 × 37 grid)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import torch

from ...backbones.weights import (cache_dir, download_url, hub_cached_file, load_state_dict_file, network_available,
                                  resolve_file)
from ...errors import SettingError, WeightsError
from .torch_model import DINOv2Patches

#: timm name -> torch.hub name of the official (no-register) DINOv2 models
HUB_NAMES = {
    "vit_small_patch14_dinov2": "dinov2_vits14",
    "vit_base_patch14_dinov2": "dinov2_vitb14",
    "vit_large_patch14_dinov2": "dinov2_vitl14",
    "vit_giant_patch14_dinov2": "dinov2_vitg14",
}
#: weight tags: the released LVD-142M checkpoints (the same tensors as timm's `.lvd142m` files)
WEIGHT_TAGS = ("lvd142m",)
RELEASED_IMG_SIZE = 518  # 37 × 37 positional grid
_URL = "https://dl.fbaipublicfiles.com/dinov2/{hub}/{hub}_pretrain.pth"


def timm_name(backbone: str) -> str:
    """'vit_small_patch14_dinov2.lvd142m' or 'dinov2_vits14' -> 'vit_small_patch14_dinov2' (a clear error otherwise)."""
    base = backbone.split(".")[0]
    inverse = {v: k for k, v in HUB_NAMES.items()}
    base = inverse.get(base, base)
    if base not in HUB_NAMES and not (base.startswith("vit_") and "dinov2" in base):
        raise SettingError(f"anomalydino: backbone {backbone!r} is not a DINOv2 ViT; use one of "
                           f"{', '.join(k + '.lvd142m' for k in HUB_NAMES)} (or the hub names {', '.join(HUB_NAMES.values())})")
    return base


def hub_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A hub (or timm) DINOv2 state dict in timm key names: `mask_token` dropped, giant's SwiGLU w12/w3 -> fc1/fc2."""
    out = {}
    for k, v in sd.items():
        if k == "mask_token" or k.startswith("head."):
            continue
        out[k.replace(".mlp.w12.", ".mlp.fc1.").replace(".mlp.w3.", ".mlp.fc2.")] = v
    return out


def _released_file(base: str, tag: str) -> Path:
    """The released checkpoint of `tag`: a timm hub-cache file, torch.hub's cache, ours, else a download."""
    cached = hub_cached_file(f"timm/{base}.{tag}", ("model.safetensors", "pytorch_model.bin"))
    if cached is not None:
        return cached
    hub = HUB_NAMES.get(base)
    if hub is None:
        raise WeightsError(f"anomalydino: no released checkpoint of {base!r} for weights tag {tag!r}; "
                           "pass weights='/path/to/state_dict' (or weights=None for random init)")
    filename = f"{hub}_pretrain.pth"
    torch_hub = Path(torch.hub.get_dir()) / "checkpoints" / filename
    if torch_hub.is_file():
        return torch_hub
    if not (cache_dir() / "weights" / filename).is_file() and not network_available("dl.fbaipublicfiles.com"):
        raise WeightsError(f"anomalydino: weights tag {tag!r} ({base}) needs a download and there is no network; put "
                           f"{filename} (the released torch.hub checkpoint) at {cache_dir() / 'weights' / filename}, or pass "
                           f"weights='/path/to/{filename}' (or timm's model.safetensors; CLI: --set weights=...); "
                           "weights=None runs random init")
    url = _URL.format(hub=hub)
    return resolve_file(filename, download=download_url(url), url=url, what=f"anomalydino {tag}")


def create_dinov2(backbone: str, weights: Optional[str], seed: int = 0) -> DINOv2Patches:
    """f for `backbone`: a timm ViT built at 518 px (the released 37 × 37 table, interpolated per input as the hub
    does), LayerScale initialised at 1.0 as the hub's; weights None = seeded random init, a tag, or a local file."""
    import timm

    base = timm_name(backbone)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            vit = timm.create_model(base, pretrained=False, num_classes=0, img_size=RELEASED_IMG_SIZE, init_values=1.0)
        except Exception as exc:  # an unknown timm name
            raise SettingError(f"anomalydino: timm cannot build backbone {backbone!r} ({exc})") from exc
    if weights is not None:
        w = str(weights)
        if os.path.isfile(os.path.expanduser(w)):
            path = Path(os.path.expanduser(w))
        elif w in WEIGHT_TAGS:
            path = _released_file(base, w)
        elif any(sep in w for sep in ("/", os.sep)) or w.endswith((".pth", ".pt", ".safetensors", ".bin")):
            raise WeightsError(f"anomalydino: weights file not found: {w}")
        else:
            raise WeightsError(f"anomalydino: unknown weights {w!r}; use a tag ({', '.join(WEIGHT_TAGS)}), a local "
                               "state-dict file, or None for random init")
        load_into(vit, load_state_dict_file(path), str(path))
    return DINOv2Patches(vit.eval())


def load_into(vit: torch.nn.Module, sd: dict[str, torch.Tensor], source: str) -> None:
    """Load a released-style state dict into `vit` (its positional table may have any square grid)."""
    sd = hub_state_dict(sd)
    pos = sd.get("pos_embed")
    if pos is not None and tuple(pos.shape) != tuple(vit.pos_embed.shape):
        vit.pos_embed = torch.nn.Parameter(torch.zeros_like(pos))
    missing, unexpected = vit.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise WeightsError(f"anomalydino: {source} does not fit {type(vit).__name__} "
                           f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})")
