"""SDP+ adapter files: ours (a directory with adapter.safetensors + adapter.json) and the official checkpoint
(`torch.save({'linear_layers': state_dict})`, keys fc.0..fc.3, read with weights_only=True)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import torch

from ...errors import ModelFormatError
from ...io import atomic_path
from .torch_model import StageAdapters

ADAPTER_FORMAT = "anomalens-clipad-adapter"
ADAPTER_VERSION = 1
ADAPTER_TENSORS = "adapter.safetensors"
ADAPTER_CONFIG = "adapter.json"


def save_adapters(path: str | os.PathLike, adapters: StageAdapters, settings: dict) -> Path:
    """Write `adapters` and their settings (backbone, width, embed_dim, stages, ori_tap, training facts) atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    sd = {k: v.detach().cpu().contiguous() for k, v in adapters.state_dict().items()}
    fc0 = adapters.fc[0]
    cfg = {"format": ADAPTER_FORMAT, "format_version": ADAPTER_VERSION, "width": fc0.in_features,
           "embed_dim": fc0.out_features, "stages": len(adapters.fc)} | dict(settings)
    with atomic_path(path) as tmp:
        tmp.mkdir()
        save_file(sd, str(tmp / ADAPTER_TENSORS), metadata={"format": ADAPTER_FORMAT})
        (tmp / ADAPTER_CONFIG).write_text(json.dumps(cfg, indent=2) + "\n")
    return path


def read_adapter_file(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """(state dict, settings) from our directory (or its .safetensors) or an official .pth/.pt checkpoint."""
    p = Path(path).expanduser()
    if not p.exists():
        raise ModelFormatError(f"adapter not found: {p}")
    if p.is_dir():
        if not (p / ADAPTER_CONFIG).is_file() and (p / "last" / ADAPTER_CONFIG).is_file():
            p = p / "last"
        tensors, cfg_path = p / ADAPTER_TENSORS, p / ADAPTER_CONFIG
        if not tensors.is_file() or not cfg_path.is_file():
            raise ModelFormatError(f"{p} is not a CLIP-AD adapter directory (needs {ADAPTER_TENSORS} and {ADAPTER_CONFIG})")
    elif p.suffix == ".safetensors":
        tensors, cfg_path = p, p.with_name(ADAPTER_CONFIG)
    else:
        return _read_official(p), {"format": "official"}
    from safetensors.torch import load_file

    try:
        cfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
        sd = load_file(str(tensors))
    except (OSError, ValueError, json.JSONDecodeError) as exc:
        raise ModelFormatError(f"corrupt CLIP-AD adapter {p}: {exc}") from exc
    if cfg and cfg.get("format") != ADAPTER_FORMAT:
        raise ModelFormatError(f"{cfg_path} is not a CLIP-AD adapter (format={cfg.get('format')!r})")
    return sd, cfg


def _read_official(p: Path) -> dict[str, torch.Tensor]:
    try:
        ckpt = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, truncated zips, foreign formats
        raise ModelFormatError(f"cannot read {p} as an official CLIP-AD checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(ckpt, dict) or "linear_layers" not in ckpt:
        keys = list(ckpt)[:5] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ModelFormatError(f"{p} is not an official CLIP-AD checkpoint (expected {{'linear_layers': state_dict}}, got {keys})")
    return dict(ckpt["linear_layers"])


def build_adapters(sd: dict[str, torch.Tensor], width: int, embed_dim: int, stages: int, source: str,
                   cfg: Optional[dict] = None, backbone: Optional[str] = None) -> StageAdapters:
    """StageAdapters(width -> embed_dim) × stages loaded from `sd`; any mismatch is one clear error."""
    cfg = cfg or {}
    if backbone and cfg.get("backbone") and cfg["backbone"] != backbone:
        raise ModelFormatError(f"adapter {source} was trained for backbone {cfg['backbone']!r}, this model uses {backbone!r}")
    expected = {f"fc.{j}.{n}" for j in range(stages) for n in ("weight", "bias")}
    if set(sd) != expected:
        raise ModelFormatError(f"adapter {source} holds keys {sorted(sd)[:8]}; expected fc.0..fc.{stages - 1} weight/bias "
                               f"({stages} stages)")
    w = sd["fc.0.weight"]
    if tuple(w.shape) != (embed_dim, width):
        raise ModelFormatError(f"adapter {source} maps {w.shape[1]} -> {w.shape[0]}, but this backbone needs "
                               f"{width} -> {embed_dim} (width -> embed dim); it was trained for another CLIP model")
    adapters = StageAdapters(width, embed_dim, stages)
    adapters.load_state_dict({k: v.float() for k, v in sd.items()})
    return adapters.eval().requires_grad_(False)
