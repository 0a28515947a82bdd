"""The MuSc estimator: transductive mutual scoring of a set, plus stream / MuSc+ scoring against a reference pool."""
from __future__ import annotations

import random
import warnings
from typing import Literal, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ...backbones import create_clip
from ...data import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD, DataLike, ImageDataset, ImageTransform, as_dataset
from ...detector import Detector, Prediction
from ...errors import DataError
from ...ops.rescoring import rscin, rscin_reference
from ...registry import register_model
from .torch_model import (LayerFeatures, interval_k, layer_msm_scores, mutual_min_distances, reduce_interval,
                          reference_distances)

_TOKEN_DTYPES = {"float32": torch.float32, "float16": torch.float16}


def create_timm_vit(name: str, weights: Optional[str], image_size: int, seed: int = 0):
    """A timm ViT (DINO / DINOv2) at `image_size`; weights: None (random init), a local file, or any other value =
    timm's pretrained download (hub cache first; offline without it = one clear error at once)."""
    import os

    import timm

    from ...backbones.weights import cache_dir, hub_cached_file, network_available, offline_weights_error
    from ...errors import WeightsError

    kwargs = {"img_size": image_size, "num_classes": 0}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if weights is None:
            return timm.create_model(name, pretrained=False, **kwargs)
        file = str(weights) if os.path.isfile(str(weights)) else None
        if file is None:
            cached = hub_cached_file(f"timm/{name}", ("model.safetensors", "pytorch_model.bin"))
            file = str(cached) if cached else None
        if file is None and not network_available():
            raise offline_weights_error(f"timm {name}", cache_dir() / "weights" / f"{name}.safetensors", "model.safetensors")
        try:
            if file is not None:
                return timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": file}, **kwargs)
            return timm.create_model(name, pretrained=True, **kwargs)
        except Exception as exc:
            raise WeightsError(f"could not load timm weights for {name} ({type(exc).__name__}: {' '.join(str(exc).split())[:200]}); "
                               "pass --set weights=/path/to/model.safetensors (Python: weights=...); weights=None runs random init") from exc


def default_layers(depth: int) -> list[int]:
    """The last block of each of 4 equal stages: [5, 11, 17, 23] for 24 blocks, [2, 5, 8, 11] for 12."""
    return [depth * (s + 1) // 4 - 1 for s in range(4)]


def stratified_subsets(groups: Sequence[str], n_subsets: int, seed: int = 42) -> list[list[int]]:
    """The official split: shuffle each defect-type group (Python `random`, seed 42), deal round-robin into s subsets."""
    rnd = random.Random(seed)
    by_group: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        by_group.setdefault(g, []).append(i)
    subsets: list[list[int]] = [[] for _ in range(n_subsets)]
    for g in sorted(by_group):
        idx = by_group[g][:]
        rnd.shuffle(idx)
        for k, i in enumerate(idx):
            subsets[k % n_subsets].append(i)
    return [sorted(s) for s in subsets if s]


@register_model(
    "musc",
    description="MuSc: zero-shot mutual scoring of unlabeled images (LNAMD, MSM, RsCIN); stream and MuSc+ modes",
    paper="Li et al., MuSc: Zero-Shot Industrial Anomaly Classification and Segmentation with Mutual Scoring, ICLR 2024",
    pretrained={"ViT-L-14-336": "openai", "ViT-B-16-plus-240": "laion400m_e31"},
)
class MuSc(Detector):
    """MuSc with the official run's defaults (spec §3.9): open_clip ViT-L-14-336 / openai at 518 px (GELU build),
    layers [5, 11, 17, 23], r ∈ {1, 3, 5}, X_max = 0.3, RsCIN windows (1, 2, 3), or (1, 8, 9) on a VisA dataset
    (rscin_k=None picks by dataset; set it to override).

    `predict(images)` scores the set transductively. After `fit(images)` (unlabeled or normal images) the pool
    becomes the reference set: new images are scored against it (stream mode, K = ⌊0.3·P⌋), or with
    reference_reducer='min' against normal references only (MuSc+, the paper's appendix). A stream score
    depends on the image and the pool alone: RsCIN's min–max and neighbours come from the pool (≥ 2 images).

    Raw tokens are kept as `token_dtype` (float32 as in the spec; 'float16' halves the cache and pool).
    """

    zero_shot = True
    geometries = ("paper", "whole")
    geometry_refusal = ("mutual scoring compares each image's patch grid with the same-size grids of the other images "
                        "of the set; tiles or aspect-kept frames give every image its own grid, so there is nothing to "
                        "compare them with. MuSc squashes every image (paper = whole); for large images use PatchCore "
                        "or WinCLIP with geometry='tiles'")

    def __init__(
        self,
        backbone: str = "ViT-L-14-336",
        weights: Optional[str] = "openai",
        image_size: int = 518,
        layers: Optional[Sequence[int]] = None,
        r_list: Sequence[int] = (1, 3, 5),
        x_max: float = 0.3,
        rscin_k: Optional[Sequence[int]] = None,
        n_subsets: int = 1,
        reference_reducer: str = "interval",
        max_pool: Optional[int] = None,
        block: Optional[int] = None,
        geometry: Literal["auto", "paper", "whole", "aspect", "tiles"] = "auto",
        batch_size: int = 4,
        cache_dir: Optional[str] = None,
        token_dtype: str = "float32",
        seed: int = 0,
        device: str = "auto",
    ):
        self.backbone = backbone
        self.weights = weights
        self.image_size = image_size
        self.layers = layers
        self.r_list = r_list
        self.x_max = x_max
        self.rscin_k = rscin_k
        self.n_subsets = n_subsets
        self.reference_reducer = reference_reducer
        self.max_pool = max_pool
        self.block = block
        self.geometry = geometry
        self.batch_size = batch_size
        self.cache_dir = cache_dir
        self.token_dtype = token_dtype
        self.seed = seed
        self.device = device

    @property
    def is_timm(self) -> bool:
        """DINO / DINOv2 (or any timm ViT) given as 'timm:<name>', e.g. 'timm:vit_base_patch14_dinov2.lvd142m'."""
        return self.backbone.startswith("timm:")

    @property
    def input_size(self) -> int:
        return int(self.image_size)

    @property
    def paper_transform(self) -> ImageTransform:
        """Squash to S×S: CLIP bicubic with OpenAI mean/std; DINO bilinear with ImageNet mean/std (spec §2.2)."""
        size = (self.image_size, self.image_size)
        if self.is_timm:
            return ImageTransform(size, None, IMAGENET_MEAN, IMAGENET_STD, "bilinear")
        return ImageTransform(size, None, CLIP_MEAN, CLIP_STD, "bicubic")

    def setup(self) -> "MuSc":
        """Build the ViT now (resolving its weights)."""
        self._visual()
        return self

    def _visual(self):
        visual = getattr(self, "_visual_model", None)
        if visual is None:
            if self.is_timm:
                visual = create_timm_vit(self.backbone[5:], self.weights, self.image_size, self.seed)
                depth = len(visual.blocks)
            else:
                model, _, _ = create_clip(self.backbone, self.weights, "cpu", image_size=self.image_size, init_seed=self.seed)
                visual = model.visual
                del model
                depth = len(visual.transformer.resblocks)
            visual = visual.to(self.device_).eval()
            self._layer_ids = list(self.layers) if self.layers is not None else default_layers(depth)
            self._visual_model = visual
        return visual

    def _encode(self, images: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Raw patch tokens of the chosen blocks [(B, M, C)] and the image-level feature used by RsCIN (B, D).

        CLIP: residual-stream tokens without ln_post; CLS = ln_post + proj, L2-normalised.
        DINO / DINOv2 (timm): the final norm applied to every intermediate; CLS = final-norm CLS, not L2-normalised.
        """
        visual = self._visual()
        with torch.inference_mode():
            if self.is_timm:
                final, inter = visual.forward_intermediates(images.to(self.device_), indices=self._layer_ids, norm=True,
                                                            output_fmt="NLC")
                return list(inter), final[:, 0].float()
            out = visual.forward_intermediates(images.to(self.device_), indices=self._layer_ids,
                                               normalize_intermediates=False, output_fmt="NLC")
            return list(out["image_intermediates"]), F.normalize(out["image_features"].float(), dim=-1)

    # ------------------------------------------------------------------ features
    def extract(self, ds: ImageDataset) -> tuple[dict[int, torch.Tensor], torch.Tensor, list]:
        """Raw block outputs per layer {l: (N, M, C) token_dtype}, L2-normalised CLS embeddings (N, D), masks per batch.

        With `cache_dir`, each image file's tokens are stored once (token_dtype safetensors keyed by file content
        identity and backbone settings), so re-scoring, ablations and metrics never re-run the ViT.
        """
        self._visual()
        dtype = self._token_dtype()
        cache = TokenCache(self.cache_dir, self._cache_tag()) if self.cache_dir else None
        per_image: list[Optional[tuple[list[torch.Tensor], torch.Tensor]]] = [None] * len(ds)
        if cache is not None:
            for i, rec in enumerate(ds.records):
                per_image[i] = cache.get(rec.path)
        todo = [i for i, hit in enumerate(per_image) if hit is None]
        masks = [None] * len(ds)
        self._paths = list(ds.paths)
        if todo:
            sub = ds.subset(todo) if len(todo) < len(ds) else ds
            pos = iter(todo)
            for images, batch_masks, samples in self._batches(sub, "musc: features"):
                inter, cls = self._encode(images)
                cls = cls.cpu()
                toks = [t.to("cpu", dtype) for t in inter]
                for b in range(len(samples)):
                    i = next(pos)
                    per_image[i] = ([t[b] for t in toks], cls[b])
                    masks[i] = batch_masks[b] if batch_masks is not None else None
                    if cache is not None:
                        cache.put(samples[b].path, per_image[i])
        if ds.has_masks and any(m is None for m in masks):  # cached images: masks still come from the dataset
            masks = [ds.load(r).mask for r in ds.records]
        tokens = {l: torch.stack([p[0][k] for p in per_image]) for k, l in enumerate(self._layer_ids)}
        stacked_masks = [torch.stack(masks)] if all(m is not None for m in masks) else [None]
        return tokens, torch.stack([p[1] for p in per_image]), stacked_masks

    def _cache_tag(self) -> str:
        return (f"{self.backbone}|{self.weights}|{self.image_size}|{list(self._layer_ids)}|"
                f"{self.seed if self.weights is None else ''}|{self.token_dtype}")

    def _token_dtype(self) -> torch.dtype:
        if self.token_dtype not in _TOKEN_DTYPES:
            raise ValueError(f"token_dtype must be one of {sorted(_TOKEN_DTYPES)}, got {self.token_dtype!r}")
        return _TOKEN_DTYPES[self.token_dtype]

    def _grid(self, n_tokens: int) -> tuple[int, int]:
        side = int(round(n_tokens**0.5))
        return side, side

    def _layers(self, tokens: dict[int, torch.Tensor]):
        """Yield each layer's LayerFeatures (layer-normalised tokens + 1/‖z‖ per r): one layer resident at a time."""
        for l in self._layer_ids:
            t = tokens[l].to(self.device_)  # scoring runs on the model's device
            yield LayerFeatures.from_tokens(t, self._grid(t.shape[1]), self.r_list)

    # ------------------------------------------------------------------ scoring
    def patch_scores(self, tokens: dict[int, torch.Tensor]) -> torch.Tensor:
        """Batch mode (Eq. 3): (N, M) mean over (layer, r) of MSM interval-mean scores."""
        n = next(iter(tokens.values())).shape[0]
        if n < 2:
            raise DataError(f"MuSc scores a set against itself: got {n} image; give at least 2 images, or fit() a reference pool first")
        if n < 10:
            warnings.warn(f"MuSc on only {n} images: mutual scoring is weak on small sets (K = {interval_k(n - 1, self.x_max)})")
        return self._mean_over_pairs(tokens, lambda f: layer_msm_scores(f, self.x_max, self.block))

    def reference_scores(self, tokens: dict[int, torch.Tensor], pool: dict[int, torch.Tensor]) -> torch.Tensor:
        """Stream / MuSc+ mode: (N, M) scores of new images against the pool only."""
        P = next(iter(pool.values())).shape[0]
        k = 1 if self.reference_reducer == "min" else interval_k(P, self.x_max)
        n_new = next(iter(tokens.values())).shape[0]
        both = {l: torch.cat([tokens[l], pool[l]]) for l in tokens}  # one pass (LayerNorm and LNAMD are per image)
        new, old = slice(0, n_new), slice(n_new, None)
        return self._mean_over_pairs(
            both, lambda f: [reduce_interval(A, k) for A in reference_distances(f.take(new), f.take(old), self.block)]
        )

    def _mean_over_pairs(self, tokens: dict[int, torch.Tensor], score) -> torch.Tensor:
        """Eq. 3: the mean over (layer, r) of the per-r scores `score(layer_features)`; returned on CPU."""
        total, count = None, 0
        for f in self._layers(tokens):
            for s in score(f):
                total = s if total is None else total + s
                count += 1
        return (total / count).cpu()

    def _maps(self, scores: torch.Tensor, chunk: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
        """Anomaly maps (N, S, S) float32: the patch grid upsampled bilinearly (align_corners=True, in float64 as
        the official code); and the pre-RsCIN image scores c (N,) float64 = the maximum of each upsampled map
        (the official `ac_score`: between grid points the interpolation stays below the grid maximum)."""
        h, w = self._grid(scores.shape[1])
        size = (self.image_size, self.image_size)
        maps = torch.empty(scores.shape[0], *size, dtype=torch.float32)
        c = torch.empty(scores.shape[0], dtype=torch.float64)
        for s in range(0, scores.shape[0], chunk):
            up = F.interpolate(scores[s : s + chunk].double().view(-1, 1, h, w), size=size, mode="bilinear", align_corners=True)[:, 0]
            maps[s : s + chunk] = up
            c[s : s + chunk] = up.flatten(1).amax(1)
        return maps, c

    # ------------------------------------------------------------------ contract
    def _fit(self, dataset: Optional[ImageDataset]) -> None:
        if self.reference_reducer not in ("interval", "min"):
            raise ValueError(f"reference_reducer must be 'interval' or 'min', got {self.reference_reducer!r}")
        if dataset is None:
            self.pool_tokens_ = None
            return
        tokens, cls, _ = self.extract(dataset)
        self.pool_tokens_, self.pool_cls_ = tokens, cls
        self._trim_pool()

    def partial_fit(self, data: DataLike) -> "MuSc":
        """Add images to the reference pool (oldest dropped beyond `max_pool`)."""
        ds = as_dataset(data, self.transform)
        tokens, cls, _ = self.extract(ds)
        if getattr(self, "pool_tokens_", None) is None:
            self.pool_tokens_, self.pool_cls_ = tokens, cls
        else:
            self.pool_tokens_ = {l: torch.cat([self.pool_tokens_[l], tokens[l]]) for l in tokens}
            self.pool_cls_ = torch.cat([self.pool_cls_, cls])
        self._trim_pool()
        self.fitted_ = True
        return self

    def _trim_pool(self) -> None:
        """Bound the pool to the latest `max_pool` images and move its tokens to disk (token_dtype, memory-mapped)."""
        if self.max_pool is not None and self.pool_cls_.shape[0] > self.max_pool:
            keep = slice(self.pool_cls_.shape[0] - int(self.max_pool), None)
            self.pool_tokens_ = {l: t[keep] for l, t in self.pool_tokens_.items()}
            self.pool_cls_ = self.pool_cls_[keep]
        self.pool_tokens_ = self._to_disk(self.pool_tokens_)
        self._pool_image_scores = None

    def _to_disk(self, tokens: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
        import tempfile

        from ...io import warnings_suppressed

        old = getattr(self, "_pool_dir", None)
        self._pool_dir = tempfile.TemporaryDirectory(prefix="musc-pool-", dir=self.cache_dir)
        out = {}
        for l, t in tokens.items():
            path = f"{self._pool_dir.name}/layer{l}.npy"
            np.save(path, t.to(self._token_dtype()).numpy())
            with warnings_suppressed():
                out[l] = torch.from_numpy(np.load(path, mmap_mode="r"))
        if old is not None:
            old.cleanup()
        return out

    def _pool_scores(self) -> torch.Tensor:
        """Pre-RsCIN image scores c of the pool images, each against the rest of the pool with the stream reducer
        (interval mean, K = ⌊0.3·(P−1)⌋; or the minimum for MuSc+). Computed once per pool: a function of the
        pool alone, saved with the model; they fix stream mode's RsCIN statistics."""
        if getattr(self, "_pool_image_scores", None) is None:
            P = self.pool_cls_.shape[0]
            if P < 2:
                raise DataError(f"the reference pool holds {P} image: stream scoring needs at least 2 pool images "
                                "(its normalisation comes from the pool's own scores); fit() or partial_fit() more images")
            k = 1 if self.reference_reducer == "min" else interval_k(P - 1, self.x_max)
            scores = self._mean_over_pairs(self.pool_tokens_, lambda f: [reduce_interval(A, k) for A in mutual_min_distances(f, self.block)])
            self._pool_image_scores = self._maps(scores)[1]
        return self._pool_image_scores

    def _windows(self, ds: ImageDataset) -> tuple[int, ...]:
        if self.rscin_k is not None:
            return tuple(self.rscin_k)
        return (1, 8, 9) if ds.name == "visa" else (1, 2, 3)

    def predict(self, data: DataLike) -> Prediction:
        """Score the set (batch mode) or each image against the fitted pool (stream / MuSc+ mode)."""
        ds = as_dataset(data, self.transform)
        pool = getattr(self, "pool_tokens_", None)
        if pool is not None:
            self._pool_scores()  # a one-image pool fails here, before the ViT runs
        else:
            n = len(ds)
            parts = stratified_subsets([r.defect_type for r in ds.records], self.n_subsets) if self.n_subsets > 1 else [list(range(n))]
            if n >= 2 and min(len(p) for p in parts) < 2:
                raise DataError(f"n_subsets={self.n_subsets} leaves a subset of {min(len(p) for p in parts)} image among "
                                f"{n}: every subset needs at least 2 images; lower n_subsets")
        tokens, cls, masks = self.extract(ds)
        if pool is None:
            scores = torch.empty(n, next(iter(tokens.values())).shape[1])
            for idx in parts:
                sub = {l: t[idx] for l, t in tokens.items()}
                scores[idx] = self.patch_scores(sub)
            maps, c = self._maps(scores)
            image = rscin(c, cls, self._windows(ds))  # over the whole category, not per subset
        else:
            scores = self.reference_scores(tokens, pool)
            maps, c = self._maps(scores)
            image = rscin_reference(c, cls, self._pool_scores(), self.pool_cls_, self._windows(ds))
        self.raw_patch_scores_ = scores
        return self._prediction(ds, image.numpy(), maps.numpy(), masks, self._paths)

    # ------------------------------------------------------------------ persistence
    def _state_tensors(self) -> dict[str, torch.Tensor]:
        if getattr(self, "pool_tokens_", None) is None:
            return {}
        out = {f"pool_tokens.{l}": t for l, t in self.pool_tokens_.items()}
        out["pool_cls"] = self.pool_cls_
        if getattr(self, "_pool_image_scores", None) is not None:
            out["pool_scores"] = self._pool_image_scores
        return out

    def _load_state(self, tensors: dict[str, torch.Tensor], extra: dict) -> None:
        if "pool_cls" not in tensors:
            self.pool_tokens_ = None
            return
        self.pool_tokens_ = {int(k.split(".")[1]): v for k, v in tensors.items() if k.startswith("pool_tokens.")}
        self.pool_cls_ = tensors["pool_cls"]
        self._pool_image_scores = tensors.get("pool_scores")


class TokenCache:
    """Per-image raw tokens on disk: <cache_dir>/<sha1(path, size, mtime, settings)>.safetensors (token_dtype)."""

    def __init__(self, folder: str, tag: str):
        from pathlib import Path

        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.tag = tag

    def _key(self, path: str):
        import hashlib
        import os

        if path.startswith("<"):  # in-memory tensors have no identity on disk
            return None
        st = os.stat(path)
        ident = f"{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}|{self.tag}"
        return self.folder / (hashlib.sha1(ident.encode()).hexdigest() + ".safetensors")

    def get(self, path: str):
        """(tokens per layer, cls) or None."""
        key = self._key(path)
        if key is None or not key.is_file():
            return None
        from safetensors.torch import load_file

        try:
            d = load_file(str(key))
        except Exception:  # a torn or foreign file: recompute
            return None
        n = len([k for k in d if k.startswith("layer")])
        return [d[f"layer{k}"] for k in range(n)], d["cls"]

    def put(self, path: str, item) -> None:
        """Store one image's tokens atomically."""
        key = self._key(path)
        if key is None:
            return
        from safetensors.torch import save_file

        from ...io import atomic_path

        tensors = {f"layer{k}": t.contiguous() for k, t in enumerate(item[0])}
        tensors["cls"] = item[1].contiguous()
        with atomic_path(key) as tmp:
            save_file(tensors, str(tmp))
