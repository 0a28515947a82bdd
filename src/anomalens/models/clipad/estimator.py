"""The CLIP-AD estimator (SDP zero-shot, SDP+ with trained stage adapters), spec §3 defaults."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from ...backbones import create_clip, encode_text_truncated
from ...backbones.weights import cache_dir
from ...data import CLIP_MEAN, CLIP_STD, ImageDataset, ImageTransform
from ...detector import Detector
from ...errors import AnomalensError
from ...ops import gaussian_blur
from ...registry import register_model
from .adapters import build_adapters, read_adapter_file
from .prompts import NAME_TRANSFORMS, build_prompts
from .torch_model import (
    ORI_TAPS,
    StageAdapters,
    abnormal_probability,
    adapter_map,
    dbscan_preset,
    dual_path_forward,
    representative_vector,
    sdp_map,
    sdp_patch_scores,
)

VARIANTS = ("sdp", "sdp+")
DATASETS = ("mvtec", "visa")
_TEXT_CACHE: dict[str, torch.Tensor] = {}  # in-process text features by cache key (see CLIPAD.text_cache_key)


class SquashTransform(ImageTransform):
    """Squash resize (aspect not kept, bicubic) + CLIP normalisation; masks follow the official geometry:
    bilinear (antialiased) resize of the 0/1 mask, then > 0.5 (spec §2.2)."""

    def mask(self, mask) -> torch.Tensor:
        m = torch.as_tensor(np.asarray(mask, dtype=np.float32) > 0, dtype=torch.float32)[None]
        m = TF.resize(m, list(self.resize), interpolation=InterpolationMode.BILINEAR, antialias=True)
        return m[0] > 0.5


def sigma_preset(variant: str, dataset: str) -> float:
    """Smoothing σ of the official scripts: 8, except SDP+ on VisA (2)."""
    return 2.0 if (variant == "sdp+" and dataset == "visa") else 8.0


@register_model(
    "clipad",
    description="CLIP-AD: RVS text vectors, staged dual-path (V-V surgery) maps, zero-shot SDP or SDP+ with trained stage linears",
    paper="Chen et al., CLIP-AD: A Language-Guided Staged Dual-Path Model for Zero-shot Anomaly Detection, arXiv 2311.00453",
    pretrained={"ViT-B-16-plus-240": "laion400m_e31"},
)
class CLIPAD(Detector):
    """CLIP-AD SDP (training-free) and SDP+ (`adapter=`: 4 linears trained on another dataset), spec defaults:
    open_clip ViT-B-16-plus-240 / laion400m_e31, any image squashed to 240², 4 stages of 3 blocks, DBSCAN RVS with
    the `dataset` preset, σ = 8 (SDP+ on VisA: 2). image_scores = p_abn + map_max (raw sum; the paper's per-category
    min–max sum is `clipad_minmax_scores(prediction)`), both parts in `Prediction.components`. geometry: "paper" (the
    squash above), "whole" (the same squash), "aspect" (shorter side 240, square tiles across the long side), "tiles"
    (native-resolution tiles resized to 240; every score and component the max over tiles); "auto" = paper on MVTec AD
    / VisA, else aspect or tiles by image size (`anomalens.data.geometry`)."""

    zero_shot = True
    setting_ranges = {"image_size": "[16, inf)", "stages": "[1, inf)", "sigma": "[0, inf)", "dbscan_eps": "(0, inf)",
                      "dbscan_min_samples": "[1, inf)"}

    def __init__(
        self,
        class_name: str = "object",
        variant: Literal["sdp", "sdp+"] = "sdp",
        dataset: Literal["mvtec", "visa"] = "mvtec",
        backbone: str = "ViT-B-16-plus-240",
        weights: Optional[str] = "laion400m_e31",
        adapter: Optional[str] = None,
        image_size: int = 240,
        stages: int = 4,
        ori_tap: Literal["official", "block_output"] = "official",
        rvs: Literal["dbscan", "mean"] = "dbscan",
        rvs_dtype: Literal["float32", "float16"] = "float32",
        dbscan_eps: Optional[float] = None,
        dbscan_min_samples: Optional[int] = None,
        name_transform: Optional[Literal["underscore_to_space", "readable"]] = None,
        sigma: Optional[float] = None,
        geometry: Literal["auto", "paper", "whole", "aspect", "tiles"] = "auto",
        tile: Optional[int] = None,
        overlap: Optional[int] = None,
        scale: float = 1.0,
        batch_size: int = 8,
        seed: int = 0,
        device: str = "auto",
    ):
        self.class_name = class_name
        self.variant = variant
        self.dataset = dataset
        self.backbone = backbone
        self.weights = weights
        self.adapter = adapter
        self.image_size = image_size
        self.stages = stages
        self.ori_tap = ori_tap
        self.rvs = rvs
        self.rvs_dtype = rvs_dtype
        self.dbscan_eps = dbscan_eps
        self.dbscan_min_samples = dbscan_min_samples
        self.name_transform = name_transform
        self.sigma = sigma
        self.geometry = geometry
        self.tile = tile
        self.overlap = overlap
        self.scale = scale
        self.batch_size = batch_size
        self.seed = seed
        self.device = device

    # ---- settings ---------------------------------------------------------------------------------------------
    def _validate(self) -> None:
        checks = [("variant", self.variant, VARIANTS), ("dataset", self.dataset, DATASETS), ("ori_tap", self.ori_tap, ORI_TAPS),
                  ("rvs", self.rvs, ("dbscan", "mean")), ("rvs_dtype", self.rvs_dtype, ("float32", "float16")),
                  ("name_transform", self.name_transform, NAME_TRANSFORMS)]
        for name, value, allowed in checks:
            if value not in allowed:
                raise AnomalensError(f"clipad: {name} must be one of {list(allowed)}, got {value!r}")
        if self.variant == "sdp+" and self.adapter is None and getattr(self, "_adapters", None) is None:
            raise AnomalensError("clipad variant='sdp+' needs adapter= (a directory from `anomalens train clipad` or an "
                                 "official .pth checkpoint)")

    @property
    def dbscan_params(self) -> tuple[float, int]:
        """(eps, min_samples): explicit settings, else the dataset preset."""
        eps, mins = dbscan_preset(self.dataset)
        return (float(self.dbscan_eps) if self.dbscan_eps is not None else eps,
                int(self.dbscan_min_samples) if self.dbscan_min_samples is not None else mins)

    @property
    def sigma_(self) -> float:
        """The smoothing σ in use (setting, else the variant/dataset preset)."""
        return float(self.sigma) if self.sigma is not None else sigma_preset(self.variant, self.dataset)

    @property
    def paper_transform(self) -> ImageTransform:
        """Any image squashed to image_size², bicubic, OpenAI CLIP mean/std; masks in the official geometry."""
        s = int(self.image_size)
        return SquashTransform((s, s), None, CLIP_MEAN, CLIP_STD, "bicubic")

    @property
    def input_size(self) -> int:
        return int(self.image_size)

    # ---- components -------------------------------------------------------------------------------------------
    def setup(self) -> "CLIPAD":
        self._validate()
        self._model()
        if self.variant == "sdp+":
            self._stage_adapters()
        return self

    def _model(self):
        model = getattr(self, "_clip", None)
        if model is None:
            model, _, tokenizer = create_clip(self.backbone, self.weights, "cpu", image_size=self.image_size, init_seed=self.seed)
            self._clip, self._tokenizer = model.to(self.device_).eval().requires_grad_(False), tokenizer
        return self._clip

    @property
    def width(self) -> int:
        """Vision width D (896 for ViT-B/16+)."""
        return int(self._model().visual.proj.shape[0])

    @property
    def embed_dim(self) -> int:
        """Joint embedding dim C (640 for ViT-B/16+)."""
        return int(self._model().visual.proj.shape[1])

    def _stage_adapters(self) -> Optional[StageAdapters]:
        if self.variant != "sdp+":
            return None
        ad = getattr(self, "_adapters", None)
        if ad is None:
            self._validate()
            sd, cfg = read_adapter_file(self.adapter)
            ad = build_adapters(sd, self.width, self.embed_dim, self.stages, str(self.adapter), cfg, self.backbone)
            if cfg.get("ori_tap") and cfg["ori_tap"] != self.ori_tap:
                import warnings

                warnings.warn(f"adapter {self.adapter} was trained with ori_tap={cfg['ori_tap']!r}, this model uses "
                              f"{self.ori_tap!r}", RuntimeWarning, stacklevel=2)
            self._adapters = ad
        return ad.to(self.device_)

    # ---- text: RVS ------------------------------------------------------------------------------------------
    def text_cache_key(self) -> str:
        """Hash of everything the text features depend on: model, weights, prompts, class, RVS settings."""
        w = self.weights
        if w is not None and Path(str(w)).expanduser().is_file():
            st = Path(str(w)).expanduser().stat()
            w = f"{Path(str(w)).expanduser().resolve()}:{st.st_size}:{int(st.st_mtime)}"
        normal, abnormal = build_prompts(self.class_name, self.name_transform)
        eps, mins = self.dbscan_params
        parts = {"backbone": self.backbone, "weights": w, "init_seed": self.seed if self.weights is None else None,
                 "prompts": hashlib.sha256("\n".join(normal + ["|"] + abnormal).encode()).hexdigest(),
                 "rvs": self.rvs, "eps": eps, "min_samples": mins, "dtype": self.rvs_dtype}
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]

    def text_features(self) -> torch.Tensor:
        """T = [T_n, T_a] (C, 2), unit columns: cached on the model, in-process and (pretrained weights) on disk."""
        T = getattr(self, "_text", None)
        if T is not None:
            return T.to(self.device_)
        key = self.text_cache_key()
        disk = cache_dir() / "clipad_text" / f"{key}.safetensors"
        if key in _TEXT_CACHE:
            T = _TEXT_CACHE[key]
        elif self.weights is not None and disk.is_file():
            from safetensors.torch import load_file

            T = load_file(str(disk))["text"]
        else:
            T = self._encode_rvs()
            if self.weights is not None:
                from safetensors.torch import save_file

                from ...io import atomic_path

                with atomic_path(disk) as tmp:
                    save_file({"text": T.contiguous()}, str(tmp))
        _TEXT_CACHE[key] = T
        self._text = T
        return T.to(self.device_)

    def prompt_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Unit text embeddings of the 198 normal and 220 abnormal sentences (context cut at the longest)."""
        model = self._model()
        out = []
        for sentences in build_prompts(self.class_name, self.name_transform):
            with torch.inference_mode():
                e = encode_text_truncated(model, self._tokenizer(sentences).to(self.device_)).float()
            out.append(F.normalize(e, dim=-1).cpu())
        return out[0], out[1]

    def _encode_rvs(self) -> torch.Tensor:
        eps, mins = self.dbscan_params
        vecs = [representative_vector(e.numpy(), self.rvs, eps, mins, self.rvs_dtype) for e in self.prompt_embeddings()]
        return torch.stack(vecs, dim=1)

    # ---- the contract --------------------------------------------------------------------------------------
    def _fit(self, dataset: Optional[ImageDataset]) -> None:
        """Zero-shot: no images are learnt from; builds the backbone, the text features and loads the adapters."""
        self.setup()
        self.text_features()

    def forward_maps(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Unsmoothed M_SDP (and M_ft for SDP+), p_abn, for normalised (B, 3, S, S) images."""
        self._validate()
        T = self.text_features()
        model = self._model()
        with torch.inference_mode():
            x = images.to(self.device_, torch.float32)
            if x.shape[-2:] != (self.image_size, self.image_size):
                x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bicubic", align_corners=False)
            out = dual_path_forward(model, x, self.stages, self.ori_tap)
            res = {"sdp": sdp_map(sdp_patch_scores(out.surgery, T), self.image_size).float(),
                   "p_abn": abnormal_probability(out.image_embed, T).float()}
            if self.variant == "sdp+":
                res["ft"] = adapter_map(self._stage_adapters(), out.original, T, self.image_size).float()
        return res

    def _predict_batch(self, images: torch.Tensor):
        r = self.forward_maps(images)
        amap = r["sdp"] + r["ft"] if "ft" in r else r["sdp"]
        amap = gaussian_blur(amap, self.sigma_)
        map_max = amap.flatten(1).amax(1)
        p_abn = r["p_abn"]
        parts = {"p_abn": p_abn.double().cpu().numpy(), "map_max": map_max.double().cpu().numpy()}
        return parts["p_abn"] + parts["map_max"], amap.cpu().numpy(), parts

    def evaluation_scores(self, prediction) -> np.ndarray:
        """Evaluation-path hook: the paper's per-category min–max image score of `prediction` (one category's set)."""
        return clipad_minmax_scores(prediction)

    def info(self) -> dict:
        out = super().info()
        out.update({"variant": self.variant, "sigma": self.sigma_, "image_score": "p_abn + map_max (raw sum)"})
        return out

    # ---- persistence: text features and adapters travel with a saved model ----------------------------------
    def _state_tensors(self) -> dict[str, torch.Tensor]:
        out = {"text": self.text_features().cpu()}
        ad = self._stage_adapters()
        if ad is not None:
            out.update({f"adapter.{k}": v.cpu() for k, v in ad.state_dict().items()})
        return out

    def _state_extra(self) -> dict:
        return {"text_cache_key": self.text_cache_key()}

    def _load_state(self, tensors: dict[str, torch.Tensor], extra: dict) -> None:
        if "text" in tensors:
            self._text = tensors["text"].float().clone()
        ad = {k[len("adapter."):]: v for k, v in tensors.items() if k.startswith("adapter.")}
        if ad:
            self._adapters = build_adapters(ad, self.width, self.embed_dim, self.stages, "saved model", None, self.backbone)


def clipad_minmax_scores(prediction, components: tuple[str, ...] = ("p_abn", "map_max")) -> np.ndarray:
    """The paper's image score (official metrics): per component, min–max over all images of the prediction (one
    category), then summed. A zero range gives 0 for that component. Set-dependent: evaluation only, never predict."""
    comps = getattr(prediction, "components", None) or {}
    missing = [c for c in components if c not in comps]
    if missing:
        raise AnomalensError(f"prediction has no component(s) {missing} (have {sorted(comps)}); is it a clipad prediction?")
    total = np.zeros(len(prediction), dtype=np.float64)
    for c in components:
        x = np.asarray(comps[c], dtype=np.float64)
        rng = x.max() - x.min() if x.size else 0.0
        total += (x - x.min()) / rng if rng > 0 else np.zeros_like(x)
    return total
