"""Spatial Anomaly Embedding (spec §3, paper §3.2): learned anomaly tokens e_a + mask encoder E(m), spliced at `*`.

Module names mirror the official pSp `GradualStyleEncoder` (input_layer, body.i.{shortcut,res}_layer, latlayer1/2,
styles.j.{convs,linear}) so the released `spatial_encoder.pt` loads without renaming.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class BottleneckIR(nn.Module):
    """ArcFace IR unit: BN-Conv3x3-PReLU-Conv3x3(stride)-BN residual + (max-pool | 1x1 conv+BN) shortcut."""

    def __init__(self, cin: int, depth: int, stride: int):
        super().__init__()
        if cin == depth:
            self.shortcut_layer = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(nn.Conv2d(cin, depth, 1, stride, bias=False), nn.BatchNorm2d(depth))
        self.res_layer = nn.Sequential(nn.BatchNorm2d(cin), nn.Conv2d(cin, depth, 3, 1, 1, bias=False), nn.PReLU(depth),
                                       nn.Conv2d(depth, depth, 3, stride, 1, bias=False), nn.BatchNorm2d(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


class EqualLinear(nn.Module):
    """StyleGAN equalised linear layer: weight ~ N(0,1) scaled by 1/sqrt(in) at run time, bias 0."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin))
        self.bias = nn.Parameter(torch.zeros(cout))
        self.scale = 1.0 / math.sqrt(cin)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.scale, self.bias)


class TokenHead(nn.Module):
    """pSp GradualStyleBlock: log2(spatial) stride-2 Conv3x3+LeakyReLU down to 1x1, then EqualLinear -> one token."""

    def __init__(self, cin: int, cout: int, spatial: int):
        super().__init__()
        n = int(round(math.log2(spatial)))
        if 2 ** n != spatial:
            raise ValueError(f"token-head input size must be a power of two, got {spatial}")
        layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, 2, 1), nn.LeakyReLU()]
        for _ in range(n - 1):
            layers += [nn.Conv2d(cout, cout, 3, 2, 1), nn.LeakyReLU()]
        self.convs = nn.Sequential(*layers)
        self.linear = EqualLinear(cout, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.convs(x).flatten(1))


class SpatialEncoder(nn.Module):
    """E: mask (B,1,S,S) in {0,1} -> n spatial tokens (B, n, D_tok) (spec §3.2; IR body + FPN + one head per token)."""

    def __init__(self, token_dim: int, num_tokens: int = 4, mask_size: int = 256, stem: int = 64,
                 units: Sequence[int] = (3, 4, 14, 3), depths: Sequence[int] = (64, 128, 256, 512)):
        super().__init__()
        if len(units) != 4 or len(depths) != 4:
            raise ValueError("spatial encoder needs 4 stages (units and depths of length 4)")
        self.input_layer = nn.Sequential(nn.Conv2d(3, stem, 3, 1, 1, bias=False), nn.BatchNorm2d(stem), nn.PReLU(stem))
        body, cin = [], stem
        self.taps = []
        for n_units, depth in zip(units, depths):
            for u in range(n_units):
                body.append(BottleneckIR(cin, depth, 2 if u == 0 else 1))
                cin = depth
            self.taps.append(len(body) - 1)
        self.body = nn.Sequential(*body)
        fpn = depths[3]  # the FPN adds upsampled c3 to the lateral convs, so its width is c3's
        self.latlayer1 = nn.Conv2d(depths[2], fpn, 1)
        self.latlayer2 = nn.Conv2d(depths[1], fpn, 1)
        p1_size = mask_size // 4  # two stride-2 stages before c1
        self.styles = nn.ModuleList(TokenHead(fpn, token_dim, p1_size) for _ in range(num_tokens))
        self.num_tokens, self.token_dim, self.mask_size = num_tokens, token_dim, mask_size

    def forward(self, mask: torch.Tensor) -> torch.Tensor:
        x = (2 * mask.float() - 1).expand(-1, 3, -1, -1)  # {0,1} -> {-1,1}, three channels
        x = self.input_layer(x)
        feats = {}
        for i, layer in enumerate(self.body):
            x = layer(x)
            if i in self.taps[1:]:
                feats[i] = x
        c1, c2, c3 = (feats[i] for i in self.taps[1:])
        up = dict(mode="bilinear", align_corners=True)
        p2 = F.interpolate(c3, size=c2.shape[-2:], **up) + self.latlayer1(c2)
        p1 = F.interpolate(p2, size=c1.shape[-2:], **up) + self.latlayer2(c1)
        return torch.stack([head(p1) for head in self.styles], dim=1)


class TokenEmbeddings(nn.Module):
    """Per-defect-type learned token vectors (textual inversion): one Parameter (k, D) per type, so absent types get no grad."""

    def __init__(self):
        super().__init__()
        self.params = nn.ParameterDict()

    def add(self, key: str, value: torch.Tensor) -> None:
        """Register (or replace) the vectors of one type."""
        if value.ndim != 2:
            raise ValueError(f"token embedding for {key!r} must be (k, D), got shape {tuple(value.shape)}")
        self.params[_safe(key)] = nn.Parameter(value.detach().clone().float())

    def __getitem__(self, key: str) -> torch.Tensor:
        return self.params[_safe(key)]

    def __contains__(self, key: str) -> bool:
        return _safe(key) in self.params

    def keys(self) -> list[str]:
        """Defect keys in insertion order."""
        return [_unsafe(k) for k in self.params.keys()]

    def tensors(self) -> dict[str, torch.Tensor]:
        """key -> detached CPU tensor."""
        return {k: self[k].detach().cpu().contiguous() for k in self.keys()}


def _safe(key: str) -> str:  # ParameterDict keys cannot contain '.'
    return key.replace(".", "\x00")


def _unsafe(key: str) -> str:
    return key.replace("\x00", ".")


def splice_tokens(token_embeds: torch.Tensor, placeholder_pos: torch.Tensor,
                  inserts: Sequence[torch.Tensor | None]) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace the token at placeholder_pos[b] by inserts[b] (L_b, D), shift the rest right, truncate (spec §3.3).

    Returns the spliced (B, T, D) embeddings and the spans (B, 2) = [p, p + L_b) of the inserted vectors
    ((-1, -1) for rows without a placeholder, which stay unchanged).
    """
    B, T, _ = token_embeds.shape
    rows, spans = [], []
    for b in range(B):
        p = int(placeholder_pos[b])
        ins = inserts[b]
        if p < 0 or ins is None:
            rows.append(token_embeds[b])
            spans.append((-1, -1))
            continue
        ins = ins.to(token_embeds.dtype)
        row = torch.cat([token_embeds[b, :p], ins, token_embeds[b, p + 1:]], dim=0)[:T]
        rows.append(row)
        spans.append((p, min(p + ins.shape[0], T)))
    return torch.stack(rows), torch.tensor(spans, dtype=torch.long, device=token_embeds.device)
