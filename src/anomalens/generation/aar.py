"""Adaptive Attention Re-weighting (paper §3.3 eq. 7-8; spec §4.2) as a diffusers cross-attention processor.

official (default): latent-space distance of the current z_t to the clean normal latent, linear normalisation,
clip to [1, 1.5], timestep-dependent mask dilation, multiplies the *pre-softmax* logits of the [CLS] + SAE columns.
paper: decoded x0-prediction vs the normal image, w = |m|_1 softmax(f(d)), multiplies the *post-softmax* map.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F


def dilation_radius(t: int, num_steps: int = 200) -> int:
    """Official r(t) = floor((t + 100) * 8 / 1000) (x16 when the sampler has exactly 50 steps)."""
    factor = 16 if num_steps == 50 else 8
    return int((int(t) + 100) * factor // 1000)


def dilate(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Max-pool dilation of a (B,1,h,w) binary mask with a (2r+1)^2 window (radius clipped to the map size)."""
    radius = min(int(radius), max(mask.shape[-2:]) - 1)
    if radius <= 0:
        return mask
    return F.max_pool2d(mask, kernel_size=2 * radius + 1, stride=1, padding=radius)


def official_weights(z_t: torch.Tensor, z_y: torch.Tensor, mask_d: torch.Tensor, w_max: float = 1.5) -> torch.Tensor:
    """Official AAR weights (B,h,w) in [1, w_max]: > 1 inside the dilated mask where z_t is closer than average to z_y."""
    m = mask_d[:, 0].float()
    d = ((mask_d * (z_t - z_y)) ** 2).mean(dim=1)  # (B,h,w), mean over latent channels
    g = m * (1.0 / torch.where(d != 0, d, torch.full_like(d, -1.0)))
    gsum = g.sum(dim=(1, 2), keepdim=True)
    w = m.sum(dim=(1, 2), keepdim=True) * g / torch.where(gsum != 0, gsum, torch.ones_like(gsum))
    w = torch.where(w == 0, torch.ones_like(w), w).clamp(1.0, w_max)
    return torch.where(gsum != 0, w, torch.ones_like(w))


def paper_weights(x0_hat: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Paper eq. 7: w = |m|_1 * Softmax(f(d)), d = ||m*y - m*x0||^2 per pixel, f(x) = 1/x (x != 0) else -inf."""
    m = mask[:, 0].float()
    d = ((mask * y - mask * x0_hat) ** 2).sum(dim=1)
    f = torch.where(d != 0, 1.0 / d.clamp_min(1e-30), torch.full_like(d, float("-inf")))
    flat = f.flatten(1)
    soft = torch.softmax(flat, dim=1)
    soft = torch.nan_to_num(soft, nan=0.0).view_as(m)  # all -inf (mask empty or identical): no weights
    return m.sum(dim=(1, 2), keepdim=True) * soft


@dataclass
class AARState:
    """What the processors read during one UNet call: weights (B,h,w), token spans (B,2), the mode, the CLS flag."""

    weights: Optional[torch.Tensor] = None
    spans: Optional[torch.Tensor] = None
    mode: str = "official"
    include_cls_column: bool = True

    def clear(self) -> None:
        """Disable re-weighting (processors then behave as the stock processor)."""
        self.weights, self.spans = None, None


class AARAttnProcessor:
    """Cross-attention processor computing Q K^T explicitly so the logits (official) or probabilities (paper) of
    the anomaly-token columns can be re-weighted per query pixel; with no weights set it is the stock computation."""

    def __init__(self, state: AARState):
        from diffusers.models.attention_processor import AttnProcessor2_0

        self.state = state
        self._stock = AttnProcessor2_0()

    def _column_factor(self, n_query: int, n_keys: int, batch: int, device, dtype) -> Optional[torch.Tensor]:
        st = self.state
        if st.weights is None or st.spans is None:
            return None
        w = st.weights
        if w.shape[0] != batch:
            raise ValueError(f"AAR weights are for batch {w.shape[0]} but the attention batch is {batch}")
        side = int(round(n_query ** 0.5))
        if side * side != n_query:
            raise ValueError(f"AAR needs square latents; got {n_query} query positions")
        wh = F.interpolate(w[:, None].float(), size=(side, side), mode="bilinear", align_corners=False)
        wh = wh.flatten(1).to(device=device, dtype=dtype)  # (B, hw)
        cols = torch.arange(n_keys, device=device)
        sp = st.spans.to(device)
        J = (cols[None] >= sp[:, :1]) & (cols[None] < sp[:, 1:2])  # (B, keys)
        if st.mode == "official" and st.include_cls_column:
            J = J | (cols[None] == 0)
        J = J.to(dtype)
        return 1.0 + (wh[:, :, None] - 1.0) * J[:, None, :]  # (B, hw, keys)

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: Optional[torch.Tensor] = None,
                 attention_mask: Optional[torch.Tensor] = None, temb: Optional[torch.Tensor] = None, *args, **kwargs):
        if encoder_hidden_states is None or self.state.weights is None:  # nothing to re-weight: the stock fused path
            return self._stock(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        batch_size, n_query, _ = hidden_states.shape
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        if encoder_hidden_states is not None and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        attention_mask = attn.prepare_attention_mask(attention_mask, context.shape[1], batch_size)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.head_to_batch_dim(attn.to_q(hidden_states))
        key = attn.head_to_batch_dim(attn.to_k(context))
        value = attn.head_to_batch_dim(attn.to_v(context))
        factor = self._column_factor(n_query, key.shape[1], batch_size, query.device, query.dtype)
        if factor is None:
            probs = attn.get_attention_scores(query, key, attention_mask)
        else:
            factor = factor.repeat_interleave(attn.heads, dim=0)  # head_to_batch_dim is batch-major
            q, k = (query.float(), key.float()) if attn.upcast_attention else (query, key)
            scores = torch.bmm(q, k.transpose(-1, -2)) * attn.scale
            if attention_mask is not None:
                scores = scores + attention_mask
            if self.state.mode == "official":
                probs = (scores * factor.to(scores.dtype)).softmax(dim=-1)
            else:
                probs = scores.softmax(dim=-1) * factor.to(scores.dtype)
            probs = probs.to(query.dtype)
        hidden_states = attn.batch_to_head_dim(torch.bmm(probs, value))
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def install_aar(unet, state: AARState) -> list[str]:
    """Put an AARAttnProcessor on every cross-attention (attn2) layer; other layers keep their processor."""
    procs = dict(unet.attn_processors)
    names = [n for n in procs if n.endswith("attn2.processor")]
    if not names:
        raise ValueError("the UNet has no cross-attention (attn2) layers to re-weight")
    proc = AARAttnProcessor(state)
    unet.set_attn_processor({n: (proc if n in names else p) for n, p in procs.items()})
    return names
