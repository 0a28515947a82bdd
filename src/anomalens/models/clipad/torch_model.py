"""CLIP-AD's torch core (spec §3, paper §3): RVS text vectors, the staged dual-path forward (stock CLIP + V-V surgery
read-out through hooks on open_clip's own modules), feature surgery, SDP / SDP+ maps, focal + dice losses.

Symbols follow the spec: `h_b` block outputs, `o_b` attention outputs, `u_b = h_{b-1} + o_b`, `s_b` surgery
(V-V) outputs, `S_j` stage sums, `Z_j` unit surgery tokens, `O_j` raw original-path taps, `T = [T_n, T_a]` (C, 2).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...errors import AnomalensError

ORI_TAPS = ("official", "block_output")
LOGIT_SCALE = 100.0  # fixed CLIP scale of the classification and SDP+ logits (not the model's logit_scale)
NORM_EPS = 1e-6


# ---------------------------------------------------------------------------------------------------------------
# RVS (spec §3.1): representative vectors of the normal / abnormal prompt groups
# ---------------------------------------------------------------------------------------------------------------
DBSCAN_PRESETS = {"mvtec": (0.5, 15), "visa": (1.5, 25)}  # paper §A; any dataset not named visa uses the MVTec one


def dbscan_preset(dataset: str) -> tuple[float, int]:
    """(eps, min_samples) of the official code for `dataset` (visa: 1.5 / 25, everything else: 0.5 / 15)."""
    return DBSCAN_PRESETS["visa" if str(dataset).lower() == "visa" else "mvtec"]


def representative_vector(embeddings: np.ndarray, method: str = "dbscan", eps: float = 0.5, min_samples: int = 15,
                          dtype: str = "float32") -> torch.Tensor:
    """M(·) of one prompt group: unit embeddings (n, C) -> one unit vector (C,) (spec §3.1 step 3).

    dbscan: mean of the largest non-noise DBSCAN cluster (ties: smallest label), mean fallback with a warning when
    every point is noise. dtype="float16" rebuilds the official vector bit for bit: cluster mean in float32, cast to
    float16, normalised in float16 (returned as float32 values of that float16 vector).
    """
    data = np.asarray(embeddings, dtype=np.float32)
    if method == "mean":
        centre = data.mean(axis=0)
    elif method == "dbscan":
        from sklearn.cluster import DBSCAN

        labels = DBSCAN(eps=eps, min_samples=min_samples).fit(data).labels_
        if (labels >= 0).any():
            label = int(np.argmax(np.bincount(labels[labels >= 0])))
            centre = data[labels == label].mean(axis=0)
        else:
            warnings.warn(f"RVS: DBSCAN(eps={eps}, min_samples={min_samples}) found no cluster among {len(data)} prompts; "
                          "using the plain mean", RuntimeWarning, stacklevel=2)
            centre = data.mean(axis=0)
    else:
        raise ValueError(f"RVS method must be 'dbscan' or 'mean', got {method!r}")
    if dtype == "float16":
        v = torch.tensor(centre, dtype=torch.float16)
        v = v / v.norm()
        return v.float()
    if dtype != "float32":
        raise ValueError(f"rvs_dtype must be 'float32' or 'float16', got {dtype!r}")
    v = torch.from_numpy(np.ascontiguousarray(centre, dtype=np.float32))
    return v / v.norm()


# ---------------------------------------------------------------------------------------------------------------
# The staged dual-path forward (spec §3.2)
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class DualPathOutput:
    """What one ViT pass gives: the stock image embedding, per-stage unit surgery tokens Z_j (B, N, C) and raw
    original-path taps O_j (B, N, D); `blocks` holds per-block tensors when asked for (tests)."""

    image_embed: torch.Tensor
    surgery: list[torch.Tensor]
    original: list[torch.Tensor]
    blocks: dict = field(default_factory=dict)


def vv_attention(attn: nn.Module, a: torch.Tensor) -> torch.Tensor:
    """s_b: per head softmax(v_h v_hᵀ · d^-½) v_h from the block's own v projection, heads concatenated, out_proj
    (weight + bias) applied. a = LN1(h_{b-1}) (B, N, D), batch first."""
    D = a.shape[-1]
    H = attn.num_heads
    v = F.linear(a, attn.in_proj_weight[2 * D :], attn.in_proj_bias[2 * D :] if attn.in_proj_bias is not None else None)
    B, N, _ = v.shape
    v = v.view(B, N, H, D // H).transpose(1, 2)
    s = F.scaled_dot_product_attention(v, v, v)  # scale d^-½, as the original attention
    return attn.out_proj(s.transpose(1, 2).reshape(B, N, D))


def _check_vision_tower(visual: nn.Module) -> None:
    blocks = getattr(getattr(visual, "transformer", None), "resblocks", None)
    if blocks is None or not hasattr(visual, "proj") or not hasattr(visual, "ln_post"):
        raise AnomalensError("CLIP-AD needs an open_clip ViT image tower (transformer.resblocks, ln_post, proj)")
    if getattr(visual, "attn_pool", None) is not None or getattr(visual, "pool_type", "tok") != "tok":
        raise AnomalensError("CLIP-AD needs a ViT that pools its CLS token (no attentional pooler / average pooling)")
    if getattr(visual, "final_ln_after_pool", False):
        raise AnomalensError("CLIP-AD needs ln_post applied to all tokens (final_ln_after_pool=False)")
    a = blocks[0].attn
    if not hasattr(a, "in_proj_weight") or not hasattr(a, "out_proj") or hasattr(blocks[0], "ln_1_kv"):
        raise AnomalensError("CLIP-AD needs packed-qkv self-attention blocks (attn.in_proj_weight, attn.out_proj)")


def stage_ends(n_blocks: int, stages: int) -> list[int]:
    """0-based index of the last block of every stage (4 stages of 12 blocks: 2, 5, 8, 11)."""
    if stages < 1 or n_blocks % stages:
        raise AnomalensError(f"{n_blocks} blocks cannot be split into {stages} equal stages")
    k = n_blocks // stages
    return [k * (j + 1) - 1 for j in range(stages)]


def dual_path_forward(model: nn.Module, images: torch.Tensor, stages: int = 4, ori_tap: str = "official",
                      keep_blocks: bool = False) -> DualPathOutput:
    """One stock `encode_image` pass; hooks on every block read h_{b-1}, LN1(h_{b-1}) and o_b and build the surgery
    path beside it (never feeding back). Returns the stock embedding, Z_j and O_j for every stage."""
    if ori_tap not in ORI_TAPS:
        raise ValueError(f"ori_tap must be one of {ORI_TAPS}, got {ori_tap!r}")
    visual = model.visual
    _check_vision_tower(visual)
    blocks = visual.transformer.resblocks
    ends = stage_ends(len(blocks), stages)
    k = len(blocks) // stages
    batch_first = getattr(visual.transformer, "batch_first", True)
    bf = (lambda t: t) if batch_first else (lambda t: t.transpose(0, 1))  # noqa: E731
    # where each stage's original tap (and surgery CLS) is read: u of the next stage's first block (official aliasing)
    # or the stage's last block output
    taps = {}
    for j, e in enumerate(ends):
        if ori_tap == "official" and j < stages - 1:
            taps[("u", e + 1)] = j
        else:
            taps[("h", e)] = j
    st: dict = {"in": None, "acc": None, "S": [None] * stages, "O": [None] * stages, "blocks": {}}

    def pre_hook(b):
        def fn(_m, args):
            st["in"] = bf(args[0])
        return fn

    def attn_hook(b):
        def fn(m, args, kwargs, out):
            a = bf(args[0] if args else kwargs["query"])
            o = bf(out[0] if isinstance(out, tuple) else out)
            s = vv_attention(m, a)
            st["acc"] = s if b % k == 0 else st["acc"] + s  # the surgery sum restarts at each stage's first block
            if b % k == k - 1:
                st["S"][b // k] = st["acc"]
            u = st["in"] + blocks[b].ls_1(o)
            if ("u", b) in taps:
                st["O"][taps[("u", b)]] = u
            if keep_blocks:
                st["blocks"][b] = {"in": st["in"], "a": a, "o": o, "s": s, "u": u}
        return fn

    def out_hook(b):
        def fn(_m, _args, out):
            h = bf(out)
            if ("h", b) in taps:
                st["O"][taps[("h", b)]] = h
            if keep_blocks:
                st["blocks"][b]["h"] = h
        return fn

    handles = []
    try:
        for b, blk in enumerate(blocks):
            handles.append(blk.register_forward_pre_hook(pre_hook(b)))
            handles.append(blk.attn.register_forward_hook(attn_hook(b), with_kwargs=True))
            handles.append(blk.register_forward_hook(out_hook(b)))
        embed = model.encode_image(images)
    finally:
        for h in handles:
            h.remove()
    surgery = []
    for j in range(stages):
        S = st["S"][j].clone()
        S[:, 0] = st["O"][j][:, 0]  # the CLS row of the surgery tokens comes from the original path
        Z = visual.ln_post(S) @ visual.proj
        surgery.append(F.normalize(Z, dim=-1, eps=NORM_EPS))
    return DualPathOutput(embed, surgery, list(st["O"]), st["blocks"])


# ---------------------------------------------------------------------------------------------------------------
# SDP (spec §3.3) and SDP+ (spec §3.4) heads
# ---------------------------------------------------------------------------------------------------------------
def feature_surgery(Z: torch.Tensor, T: torch.Tensor) -> torch.Tensor:
    """Sim (B, N, K) in closed form: w_k·cos(Z_t, T_k) − mean_k' w_k'·cos(Z_t, T_k'), w = softmax(Z_cls·T)/mean
    (temperature 1). Z (B, N, C) unit rows, T (C, K) unit columns."""
    cos = Z @ T
    p = torch.softmax(cos[:, 0], dim=-1)
    w = p / p.mean(dim=-1, keepdim=True)
    wc = cos * w[:, None, :]
    return wc - wc.mean(dim=-1, keepdim=True)


def patch_grid(n_patches: int) -> int:
    n_patches = int(n_patches)  # a traced shape is a tensor
    g = int(round(n_patches ** 0.5))
    if g * g != n_patches:
        raise AnomalensError(f"{n_patches} patch tokens do not form a square grid")
    return g


def sdp_patch_scores(surgery: Sequence[torch.Tensor], T: torch.Tensor) -> torch.Tensor:
    """Σ_j Sim_j, abnormal channel, patch rows only: (B, P)."""
    return sum(feature_surgery(Z, T)[:, 1:, 1] for Z in surgery)


def sdp_map(patch_scores: torch.Tensor, size: int) -> torch.Tensor:
    """(B, P) -> M_SDP (B, size, size): row-major grid, bilinear, align_corners=False, no normalisation."""
    g = patch_grid(patch_scores.shape[1])
    m = patch_scores.reshape(-1, 1, g, g)
    return F.interpolate(m, size=(size, size), mode="bilinear", align_corners=False)[:, 0]


class StageAdapters(nn.Module):
    """SDP+'s trainable linears, one per stage (width -> embed_dim, with bias); state-dict keys fc.j.{weight,bias}
    as in the official `LinearLayer`, so official checkpoints load unchanged."""

    def __init__(self, width: int, embed_dim: int, stages: int = 4):
        super().__init__()
        self.fc = nn.ModuleList([nn.Linear(width, embed_dim) for _ in range(stages)])

    def forward(self, original: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """X_j = Linear_j(O_j[:, 1:]) (CLS dropped), not normalised."""
        return [fc(o[:, 1:]) for fc, o in zip(self.fc, original)]


def adapter_probabilities(X: torch.Tensor, T: torch.Tensor, size: int) -> torch.Tensor:
    """Q2_j (B, K, size, size): softmax over classes of bilinear(align_corners=True)-upsampled 100·norm(X)·T."""
    logits = LOGIT_SCALE * F.normalize(X, dim=-1, eps=NORM_EPS) @ T
    B, P, K = logits.shape
    g = patch_grid(P)
    up = F.interpolate(logits.permute(0, 2, 1).reshape(B, K, g, g), size=(size, size), mode="bilinear", align_corners=True)
    return torch.softmax(up, dim=1)


def adapter_map(adapters: StageAdapters, original: Sequence[torch.Tensor], T: torch.Tensor, size: int) -> torch.Tensor:
    """M_ft = Σ_j Q_j (B, size, size), abnormal-class probability per stage summed."""
    return sum(adapter_probabilities(X, T, size)[:, 1] for X in adapters(original))


def abnormal_probability(image_embed: torch.Tensor, T: torch.Tensor) -> torch.Tensor:
    """p_abn (B,): softmax(100 · [cos_n, cos_a]) of the unit image embedding, abnormal entry."""
    return torch.softmax(LOGIT_SCALE * F.normalize(image_embed, dim=-1, eps=NORM_EPS) @ T, dim=-1)[:, 1]


# ---------------------------------------------------------------------------------------------------------------
# SDP+ training losses (spec §5, as the official code computes them)
# ---------------------------------------------------------------------------------------------------------------
def focal_loss(probs: torch.Tensor, target: torch.Tensor, gamma: float = 2.0, smooth: float = 1e-5) -> torch.Tensor:
    """probs (B, K, H, W) softmax output, target (B, H, W) in {0, 1}: mean of −(1−p_t)^γ log p_t with the one-hot
    target clamped to [smooth/(K−1), 1−smooth], p_t = Σ onehot·p + smooth, α = 1 for every class."""
    K = probs.shape[1]
    onehot = F.one_hot(target.long(), K).permute(0, 3, 1, 2).to(probs.dtype)
    onehot = onehot.clamp(smooth / (K - 1), 1.0 - smooth)
    pt = (onehot * probs).sum(1) + smooth
    return (-((1 - pt) ** gamma) * pt.log()).mean()


def dice_loss(q: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 − mean over images of (2Σ q·g + 1)/(Σ q + Σ g + 1); q, target (B, H, W)."""
    B = q.shape[0]
    q, g = q.reshape(B, -1), target.reshape(B, -1).to(q.dtype)
    return 1 - ((2 * (q * g).sum(1) + 1) / (q.sum(1) + g.sum(1) + 1)).mean()


def sdp_plus_loss(adapters: StageAdapters, original: Sequence[torch.Tensor], T: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """L = Σ_j Focal(Q2_j, G) + Dice(Q_j, G); T (B, C, 2) per image or (C, 2); masks (B, size, size)."""
    size = masks.shape[-1]
    loss = 0.0
    for X in adapters(original):
        q2 = adapter_probabilities(X, T, size)
        loss = loss + focal_loss(q2, masks) + dice_loss(q2[:, 1], masks)
    return loss
