"""open_clip models by (model name, pretrained tag) with access to intermediate tokens through forward hooks.

Only public open_clip modules are used: `model.visual.transformer.resblocks[i]` outputs are captured by
hooks (open_clip >= 2.26 runs its transformer batch-first, and the hook output is normalised to
(B, tokens, width) either way).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import nn

from ..errors import AnomalensError, WeightsError
from .weights import cache_dir, hub_cached_file, network_available, offline_weights_error


def _local_clip_checkpoint(model_name: str, tag: str) -> Optional[Path]:
    folder = cache_dir() / "open_clip"
    for ext in (".safetensors", ".bin", ".pt"):
        p = folder / f"{model_name}__{tag}{ext}"
        if p.is_file():
            return p
    return None


def resize_positional_embedding(visual: nn.Module, image_size: int) -> None:
    """Re-grid a ViT's positional embedding for `image_size` (bicubic, align_corners=False, no antialias; CLS kept)."""
    import torch.nn.functional as F

    patch = visual.patch_size[0] if isinstance(visual.patch_size, (tuple, list)) else int(visual.patch_size)
    new = image_size // patch
    pos = visual.positional_embedding.data
    old = int(round((pos.shape[0] - 1) ** 0.5))
    if new == old:
        return
    cls_pos, grid = pos[:1], pos[1:].reshape(1, old, old, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid.float(), size=(new, new), mode="bicubic", align_corners=False, antialias=False)
    grid = grid.permute(0, 2, 3, 1).reshape(new * new, -1).to(pos.dtype)
    visual.positional_embedding = nn.Parameter(torch.cat([cls_pos, grid]), requires_grad=False)
    visual.grid_size = (new, new)
    visual.image_size = (image_size, image_size)


def resolve_clip_weights(model_name: str, weights: str) -> str:
    """A local file for `weights` (a file path, a checkpoint in our cache, a hub-cached file), else the tag itself
    when the network answers; offline without a local copy = one clear error at once (no retries)."""
    import open_clip

    if Path(str(weights)).expanduser().is_file():
        return str(Path(str(weights)).expanduser())
    local = _local_clip_checkpoint(model_name, str(weights))
    if local:
        return str(local)
    cfg = open_clip.get_pretrained_cfg(model_name, str(weights)) or {}
    if not cfg:
        tags = [t for m, t in open_clip.list_pretrained() if m == model_name]
        raise WeightsError(f"open_clip {model_name} has no pretrained tag {weights!r} and no such file; tags: {tags or 'none'}")
    repo = str(cfg.get("hf_hub", "")).rstrip("/")
    if repo:
        cached = hub_cached_file(repo, ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"),
                                 (cache_dir() / "open_clip", None))
        if cached:
            return str(cached)
    if not network_available():
        raise offline_weights_error(f"open_clip {model_name} / {weights}",
                                    cache_dir() / "open_clip" / f"{model_name}__{weights}.safetensors", "open_clip_model.safetensors")
    return str(weights)


def create_clip(model_name: str, weights: Optional[str] = None, device: str | torch.device = "cpu",
                image_size: Optional[int] = None, init_seed: int = 0):
    """(model, preprocess, tokenizer) from open_clip; `weights` is a tag, a local file, or None (random init).

    image_size re-grids the positional embedding ourselves (see `resize_positional_embedding`); random init is
    seeded by `init_seed` without touching the global RNG.
    """
    import open_clip

    if model_name not in open_clip.list_models():
        raise AnomalensError(f"unknown open_clip model {model_name!r}")
    source = None if weights is None else resolve_clip_weights(model_name, weights)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(init_seed)
            model, _, preprocess = open_clip.create_model_and_transforms(
                model_name, pretrained=source, device=device, cache_dir=str(cache_dir() / "open_clip")
            )
    except Exception as exc:
        if weights is None:
            raise
        expected = cache_dir() / "open_clip" / f"{model_name}__{weights}.safetensors"
        raise WeightsError(
            f"could not load open_clip {model_name} / {weights} ({type(exc).__name__}: {' '.join(str(exc).split())[:200]}). "
            f"Put the checkpoint at {expected}, or pass --set weights=/path/to/checkpoint (Python: weights=...); "
            "weights=None runs random init"
        ) from exc
    if image_size is not None:
        resize_positional_embedding(model.visual, int(image_size))
    tokenizer = open_clip.get_tokenizer(model_name)
    return model.eval(), preprocess, tokenizer


def encode_text_truncated(model, tokens: torch.Tensor) -> torch.Tensor:
    """encode_text with the context cut at the longest real prompt (EOT + 1): exact, because attention is causal
    and the EOT token pools the output; public open_clip modules only."""
    from open_clip.transformer import text_global_pool

    L = int(tokens.argmax(dim=-1).max()) + 1  # EOT has the largest token id
    t = tokens[:, :L]
    cast = model.transformer.get_cast_dtype()
    x = model.token_embedding(t).to(cast) + model.positional_embedding[:L].to(cast)
    mask = model.attn_mask[:L, :L] if model.attn_mask is not None else None
    x = model.ln_final(model.transformer(x, attn_mask=mask))
    x = text_global_pool(x, t, model.text_pool_type, eos_token_id=getattr(model, "text_eos_id", None))
    if isinstance(model.text_projection, torch.nn.Linear):
        return model.text_projection(x)
    return x @ model.text_projection if model.text_projection is not None else x


class ClipBackbone(nn.Module):
    """Wraps an open_clip model: image embedding plus the token maps of chosen transformer blocks."""

    def __init__(self, model: nn.Module, layers: Sequence[int] = ()):
        super().__init__()
        self.model = model.eval()
        blocks = model.visual.transformer.resblocks
        bad = [i for i in layers if not -len(blocks) <= i < len(blocks)]
        if bad:
            raise AnomalensError(f"layer indices {bad} out of range for a {len(blocks)}-block vision transformer")
        self.layers = tuple(int(i) % len(blocks) for i in layers)
        self._tokens: dict[int, torch.Tensor] = {}
        self._batch_first = getattr(model.visual.transformer, "batch_first", True)
        for i in self.layers:
            blocks[i].register_forward_hook(self._make_hook(i))

    def _make_hook(self, i: int):
        def hook(_m, _inp, out):
            out = out[0] if isinstance(out, tuple) else out
            self._tokens[i] = out if self._batch_first else out.transpose(0, 1)

        return hook

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """(image embeddings (B, D), {layer: tokens (B, 1 + patches, width)})."""
        self._tokens = {}
        emb = self.model.encode_image(images)
        return emb, {i: self._tokens[i] for i in self.layers}
