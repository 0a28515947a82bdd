"""The WinCLIP / WinCLIP+ estimator (spec §3.12): language-guided window scores, plus K-normal-shot visual memories."""
from __future__ import annotations

from typing import Literal, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ...backbones import create_clip, encode_text_truncated
from ...data import CLIP_MEAN, CLIP_STD, ImageDataset, ImageTransform
from ...data.geometry import Tiler
from ...detector import Detector
from ...registry import register_model
from .prompts import build_prompts
from .torch_model import (
    anomaly_probability,
    embed_tokens,
    encode_sequences,
    harmonic_aggregate,
    min_cosine_distance,
    window_embeddings,
    window_indices,
)


@register_model(
    "winclip",
    description="WinCLIP / WinCLIP+: CLIP prompt ensemble, window features, harmonic aggregation; K normal references",
    paper="Jeong et al., WinCLIP: Zero-/Few-Shot Anomaly Classification and Segmentation, CVPR 2023",
    pretrained={"ViT-B-16-plus-240": "laion400m_e31"},
)
class WinCLIP(Detector):
    """WinCLIP (k_shot = 0) and WinCLIP+ (k_shot > 0, references from `fit`), spec §3.11 defaults:
    open_clip ViT-B-16-plus-240 / laion400m_e31 at 240 px, window scales (2, 3) with stride 1, τ = 0.07, the paper's
    22 templates, prompts L2-normalised before averaging. Images are resized so the shorter side is 240 (bicubic);
    a non-square image is cut into square tiles (stride ≤ 0.8 of the side), each tile runs the full method, and
    scores and overlapping maps are averaged (paper supp. A). That is geometry="paper" (and "aspect"); "whole" squashes
    to image_size²; "tiles" scores `tile`-px tiles of the native image (× `scale`) resized to image_size, maps blended,
    image score the largest tile score; "auto" = paper on MVTec AD / VisA and on images up to 1.5 × image_size, tiles
    above (`anomalens.data.geometry`)."""

    zero_shot = True

    def __init__(
        self,
        class_name: str = "object",
        k_shot: int = 0,
        backbone: str = "ViT-B-16-plus-240",
        weights: Optional[str] = "laion400m_e31",
        image_size: int = 240,
        scales: Sequence[int] = (2, 3),
        temperature: float = 0.07,
        templates: str = "paper22",
        extra_states: Sequence[str] = (),
        normalize_prompts_before_mean: bool = True,
        geometry: Literal["auto", "paper", "whole", "aspect", "tiles"] = "auto",
        tile: Optional[int] = None,
        overlap: Optional[int] = None,
        scale: float = 1.0,
        batch_size: int = 4,
        seed: int = 0,
        device: str = "auto",
    ):
        self.class_name = class_name
        self.k_shot = k_shot
        self.backbone = backbone
        self.weights = weights
        self.image_size = image_size
        self.scales = scales
        self.temperature = temperature
        self.templates = templates
        self.extra_states = extra_states
        self.normalize_prompts_before_mean = normalize_prompts_before_mean
        self.geometry = geometry
        self.tile = tile
        self.overlap = overlap
        self.scale = scale
        self.batch_size = batch_size
        self.seed = seed
        self.device = device

    @property
    def paper_transform(self) -> ImageTransform:
        """Shorter side → `image_size`, bicubic, OpenAI CLIP mean/std (no crop: the paper tiles instead)."""
        return ImageTransform(int(self.image_size), None, CLIP_MEAN, CLIP_STD, "bicubic")

    @property
    def paper_tiler(self) -> Tiler:
        """Square tiles of the shorter side, stride ⌊0.8 side⌋, maps averaged where they overlap, scores averaged."""
        return Tiler(None, None, 0.8, int(self.image_size), "bicubic", "uniform", "mean")

    @property
    def input_size(self) -> int:
        return int(self.image_size)

    def setup(self) -> "WinCLIP":
        self._model()
        return self

    def _model(self):
        model = getattr(self, "_clip", None)
        if model is None:
            model, _, tokenizer = create_clip(self.backbone, self.weights, "cpu", image_size=self.image_size, init_seed=self.seed)
            self._clip, self._tokenizer = model.to(self.device_).eval(), tokenizer
            self._text = None
        return self._clip

    @property
    def grid(self) -> int:
        """Patch-grid side (15 for ViT-B/16+ at 240)."""
        ps = self._model().visual.patch_size
        return self.image_size // (ps[0] if isinstance(ps, (tuple, list)) else int(ps))

    def text_prototypes(self) -> torch.Tensor:
        """T = [t_n; t_a] (2, D): mean prompt embedding per state, computed once and cached."""
        if getattr(self, "_text", None) is None:
            model = self._model()
            protos = []
            for prompts in build_prompts(self.class_name, self.templates, tuple(self.extra_states)):
                with torch.inference_mode():
                    e = encode_text_truncated(model, self._tokenizer(prompts).to(self.device_)).float()
                if self.normalize_prompts_before_mean:
                    e = F.normalize(e, dim=-1)
                protos.append(F.normalize(e.mean(0), dim=0))
            self._text = torch.stack(protos)
        return self._text

    def features(self, images: torch.Tensor) -> dict:
        """f(x) (B, D), F^P (B, P, width) after ln_post, and F^W_k (B, nW_k, D) for every scale."""
        visual = self._model().visual
        with torch.inference_mode():
            E = embed_tokens(visual, images.to(self.device_))
            f, tokens = encode_sequences(visual, E)
            windows = {k: window_embeddings(visual, E, window_indices(self.grid, k)) for k in self.scales}
        return {"image": f.float(), "patches": tokens[:, 1:].float(), "windows": {k: v.float() for k, v in windows.items()}}

    def _fit(self, dataset: Optional[ImageDataset]) -> None:
        self.memory_ = None
        if self.k_shot <= 0:
            return
        if dataset is None:
            raise ValueError(f"WinCLIP+ with k_shot={self.k_shot} needs normal reference images: fit(images)")
        refs = dataset.sample(self.k_shot, self.seed) if len(dataset) > self.k_shot else dataset
        feats = [self.features(views) for views in self._input_batches(refs, "winclip: references")]
        memory = {"patches": F.normalize(torch.cat([f["patches"] for f in feats]).flatten(0, 1), dim=-1)}
        for k in self.scales:
            memory[f"windows{k}"] = F.normalize(torch.cat([f["windows"][k] for f in feats]).flatten(0, 1), dim=-1)
        self.memory_ = memory
        self.reference_paths_ = list(refs.paths)

    def _predict_batch(self, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Scores (B,) and maps (B, S, S) of square views at the model's input size (the geometry layer tiles frames)."""
        s, m = self._score_square(images)
        return s.double().cpu().numpy(), m.float().cpu().numpy()

    def _score_square(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores (B,) and maps (B, S, S) of square images at the model's size."""
        text, G = self.text_prototypes(), self.grid
        feats = self.features(images)
        s_img = anomaly_probability(feats["image"], text, self.temperature)
        maps = [harmonic_aggregate(anomaly_probability(feats["windows"][k], text, self.temperature), G, k) for k in self.scales]
        stack = torch.stack(maps + [s_img.view(-1, 1, 1).expand(-1, G, G)])
        m0 = stack.shape[0] / (1.0 / stack.clamp(min=1e-12)).sum(0)  # harmonic fusion of the scales and the image score
        score, amap = s_img, m0
        memory = getattr(self, "memory_", None)
        if memory is not None:
            visual = [min_cosine_distance(feats["patches"], memory["patches"]).view(-1, G, G)]
            visual += [harmonic_aggregate(min_cosine_distance(feats["windows"][k], memory[f"windows{k}"]), G, k) for k in self.scales]
            mw = torch.stack(visual).mean(0)  # eq. 5
            amap = (m0 + mw) / 2
            score = (s_img + mw.flatten(1).amax(1)) / 2  # eq. 6
        up = F.interpolate(amap[:, None], size=tuple(images.shape[-2:]), mode="bilinear", align_corners=False)[:, 0]
        return score, up

    def _state_tensors(self) -> dict[str, torch.Tensor]:
        return dict(getattr(self, "memory_", None) or {})

    def _load_state(self, tensors: dict[str, torch.Tensor], extra: dict) -> None:
        self.memory_ = dict(tensors) if tensors else None
