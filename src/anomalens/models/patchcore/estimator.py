"""The PatchCore estimator: fit streams patch features to disk, selects a coreset, predict scores by exact NN."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from ...backbones import create_cnn
from ...data import IMAGENET_MEAN, IMAGENET_STD, ImageDataset, ImageTransform, iter_batches, resize_map
from ...detector import Detector
from ...ops.coreset import coreset_size, greedy_select, random_projection
from ...ops.knn import ApproximateIndex, knn
from ...ops.row_store import RowStore
from ...ops.smoothing import gaussian_blur
from ...memory import release_memory
from ...registry import register_model
from .torch_model import PatchFeatures, reweighted_score

_DTYPES = {"float32": torch.float32, "float16": torch.float16}


@register_model(
    "patchcore",
    description="PatchCore: memory bank of CNN patch features, greedy coreset, nearest-neighbour scoring (full/few-shot)",
    paper="Roth et al., Towards Total Recall in Industrial Anomaly Detection, CVPR 2022",
    pretrained={"wide_resnet50_2": "torchvision IMAGENET1K_V1", "tf_efficientnet_lite0": "embedded (pip package)"},
)
class PatchCore(Detector):
    """PatchCore with the official code's defaults (spec §2.9).

    Settings: backbone/layers/weights (WRN-50-2 layer2+3, torchvision IMAGENET1K_V1); resize 256 → crop 224;
    patch_size p = 3; pretrain_dim 1024 → target_dim d = 1024; coreset_ratio (0.1) with projection_dim d* = 128
    and coreset_start 'mean10'; exact kNN ('faiss' or 'torch'), num_neighbors k = 1; distance 'l2' or
    'squared_l2'; image_score 'max' or 'reweighted' (Eq. 7, b = reweight_b); sigma = 4 map smoothing;
    bank_dtype 'float32' or 'float16'; knn 'ivfpq' for approximate search on huge banks.
    """

    def __init__(
        self,
        backbone: str = "wide_resnet50_2",
        layers: Optional[Sequence[str]] = None,
        weights: Optional[str] = "imagenet",
        resize: int = 256,
        crop: Optional[int] = 224,
        patch_size: int = 3,
        pretrain_dim: int = 1024,
        target_dim: int = 1024,
        aggregation: str = "official",
        coreset_ratio: float = 0.1,
        projection_dim: int = 128,
        coreset_start: str = "mean10",
        seed: int = 0,
        knn: str = "faiss",
        num_neighbors: int = 1,
        distance: str = "l2",
        image_score: str = "max",
        reweight_b: int = 9,
        sigma: float = 4.0,
        bank_dtype: str = "float32",
        batch_size: int = 8,
        feature_dir: Optional[str] = None,
        device: str = "auto",
    ):
        self.backbone = backbone
        self.layers = layers
        self.weights = weights
        self.resize = resize
        self.crop = crop
        self.patch_size = patch_size
        self.pretrain_dim = pretrain_dim
        self.target_dim = target_dim
        self.aggregation = aggregation
        self.coreset_ratio = coreset_ratio
        self.projection_dim = projection_dim
        self.coreset_start = coreset_start
        self.seed = seed
        self.knn = knn
        self.num_neighbors = num_neighbors
        self.distance = distance
        self.image_score = image_score
        self.reweight_b = reweight_b
        self.sigma = sigma
        self.bank_dtype = bank_dtype
        self.batch_size = batch_size
        self.feature_dir = feature_dir
        self.device = device

    # ------------------------------------------------------------------ parts
    @property
    def transform(self) -> ImageTransform:
        return ImageTransform(self.resize, self.crop, IMAGENET_MEAN, IMAGENET_STD, "bilinear")

    def _validate(self) -> None:
        if self.distance not in ("l2", "squared_l2"):
            raise ValueError(f"distance must be 'l2' or 'squared_l2', got {self.distance!r}")
        if self.image_score not in ("max", "reweighted"):
            raise ValueError(f"image_score must be 'max' or 'reweighted', got {self.image_score!r}")
        if self.knn not in ("faiss", "torch", "ivfpq"):
            raise ValueError(f"knn must be 'faiss', 'torch' or 'ivfpq', got {self.knn!r}")
        if self.bank_dtype not in _DTYPES:
            raise ValueError(f"bank_dtype must be one of {sorted(_DTYPES)}, got {self.bank_dtype!r}")
        coreset_size(1, self.coreset_ratio)  # validates the ratio

    def _features(self) -> PatchFeatures:
        feats = getattr(self, "_feature_model", None)
        if feats is None:
            extractor = create_cnn(self.backbone, self.layers, self.weights, init_seed=self.seed).to(self.device_)
            with torch.no_grad():
                probe = extractor(torch.zeros(1, 3, 64, 64, device=self.device_))
            channels = [v.shape[1] for v in probe.values()]
            feats = PatchFeatures(extractor, channels, self.patch_size, self.pretrain_dim, self.target_dim, self.aggregation)
            self._feature_model = feats
        return feats

    def setup(self) -> "PatchCore":
        """Build the backbone now (resolving its weights)."""
        self._features()
        return self

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised images -> (B, d, h, w) locally aware patch features."""
        with torch.inference_mode():
            return self._features()(images.to(self.device_))

    # ------------------------------------------------------------------ fit
    def _fit(self, dataset: ImageDataset) -> None:
        """Stream patch features to disk, project them on the fly to d*, select the coreset, gather its rows.

        Resident during fit: the projected bank (N × d* float32), one batch, and the coreset at the end —
        never the full N × d bank (that lives in a temporary file under `feature_dir`).
        """
        self._validate()
        dtype = _DTYPES[self.bank_dtype]
        work = Path(tempfile.mkdtemp(prefix="patchcore-", dir=self.feature_dir))
        try:
            store: Optional[RowStore] = None
            projected = proj = None
            for images, _, _ in iter_batches(dataset, self.transform, self.batch_size, description="patchcore: features"):
                f = self.embed(images)
                B, d, h, w = f.shape
                rows = f.permute(0, 2, 3, 1).reshape(-1, d).to(dtype)
                if store is None:
                    store = RowStore(work / "features.bin", d, np.float16 if dtype == torch.float16 else np.float32)
                    proj = random_projection(d, self.projection_dim, self.seed).to(self.device_) if d > self.projection_dim else None
                    self.feature_shape_ = (d, h, w)
                    width = proj.shape[1] if proj is not None else d
                    projected = torch.empty(len(dataset) * h * w, width, dtype=torch.float32)  # the resident part
                start = store.n_rows
                store.append(rows.cpu().numpy())
                # project exactly what is stored, so selection sees the bank's own values
                projected[start : store.n_rows] = (rows.float() @ proj if proj is not None else rows.float()).cpu()
                del f, rows
                release_memory()  # batch temporaries go back to the OS: peak RSS stays flat as N grows
            n_rows = store.n_rows
            if self.coreset_ratio >= 1.0:
                idx = torch.arange(n_rows)
            else:
                idx = greedy_select(projected.to(self.device_), coreset_size(n_rows, self.coreset_ratio), seed=self.seed,
                                    start=self.coreset_start).cpu()
            del projected
            self.memory_bank_ = torch.from_numpy(store.gather(idx.numpy()))
            self.coreset_indices_ = idx
            store.close()
        finally:
            shutil.rmtree(work, ignore_errors=True)
        self._index = None

    # ------------------------------------------------------------------ predict
    def _search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        bank = self.memory_bank_
        if self.knn == "ivfpq":
            if getattr(self, "_index", None) is None:
                self._index = ApproximateIndex(bank, seed=self.seed)
            return self._index.search(queries, k)
        if self.knn == "torch" and bank.device != queries.device:
            bank = self.memory_bank_ = bank.to(queries.device)
        return knn(queries, bank, k, backend=self.knn)

    def _dist(self, sq: torch.Tensor) -> torch.Tensor:
        return sq if self.distance == "squared_l2" else sq.sqrt()

    def patch_scores(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, h, w) patch scores s(m_test) (Eq. 6), the patch features (B·h·w, d) and NN indices (B·h·w, k)."""
        f = self.embed(images)
        B, d, h, w = f.shape
        q = f.permute(0, 2, 3, 1).reshape(-1, d).float()
        sq, idx = self._search(q, self.num_neighbors)
        scores = self._dist(sq).mean(1)
        return scores.view(B, h, w), q, idx

    def _predict_batch(self, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        scores, q, idx = self.patch_scores(images)
        B, h, w = scores.shape
        flat = scores.view(B, -1)
        s_star, arg = flat.max(1)
        if self.image_score == "reweighted":
            image = self._reweight(s_star, q.view(B, h * w, -1), idx.view(B, h * w, -1), arg)
        else:
            image = s_star
        size = tuple(images.shape[-2:])
        maps = gaussian_blur(resize_map(scores, size, mode="bilinear", align_corners=False), self.sigma)
        return image.double().cpu().numpy(), maps.float().cpu().numpy()

    def _reweight(self, s_star, q, idx, arg) -> torch.Tensor:
        bank = self.memory_bank_
        b = min(int(self.reweight_b), bank.shape[0])
        rows = torch.arange(len(arg))
        m_test = q[rows, arg]  # (B, d)
        m_star = bank[idx[rows, arg, 0].cpu()].float().to(m_test.device)
        _, nb = knn(m_star, bank, b, backend="torch" if self.knn == "torch" else "faiss")  # N_b(m*), m* first
        neigh = bank[nb.reshape(-1).cpu()].float().to(m_test.device).view(len(arg), b, -1)
        sq = ((neigh - m_test[:, None]) ** 2).sum(-1)
        return reweighted_score(s_star, self._dist(sq))

    # ------------------------------------------------------------------ persistence
    def _state_tensors(self) -> dict[str, torch.Tensor]:
        return {"memory_bank": self.memory_bank_, "coreset_indices": self.coreset_indices_}

    def _state_extra(self) -> dict:
        return {"feature_shape": list(self.feature_shape_)}

    def _load_state(self, tensors: dict[str, torch.Tensor], extra: dict) -> None:
        self.memory_bank_ = tensors["memory_bank"]  # memory-mapped: not copied into RAM
        self.coreset_indices_ = tensors.get("coreset_indices", torch.arange(self.memory_bank_.shape[0]))
        self.feature_shape_ = tuple(extra.get("feature_shape", ()))
        self._index = None
