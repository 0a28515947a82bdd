"""The PatchCore estimator: fit streams patch features to disk, selects a coreset, predict scores by exact NN."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Literal, Optional, Sequence, Union

import numpy as np
import torch

from ...backbones import create_cnn
from ...errors import DataError
from ...data import IMAGENET_MEAN, IMAGENET_STD, ImageDataset, ImageTransform, resize_map
from ...detector import Detector
from ...ops.coreset import chunked_select, coreset_size, random_projection
from ...ops.knn import ApproximateIndex, knn
from ...ops.row_store import RowStore
from ...ops.smoothing import gaussian_blur
from ...memory import release_memory
from ...registry import register_model
from .torch_model import PatchFeatures, reweighted_score

_DTYPES = {"float32": torch.float32, "float16": torch.float16}
#: aggregation="auto" per backbone, from real-data runs (benchmarks/geometry.py): EfficientNet-Lite0's 152 channels
#: (blocks.2 + blocks.4) pooled up to 1024 dims lose pixel AUROC against anomalib's concatenation (152 dims, 6.7x less
#: bank memory and kNN time); the paper's WRN-50-2 and every unmeasured backbone keep the official pooling
BACKBONE_AGGREGATION = {"tf_efficientnet_lite0": "anomalib"}
#: coreset_chunk="auto" under aspect / tiles: rows per greedy selection (each chunk costs O(ratio · rows²))
COARSE_CHUNK_ROWS = 50_000
#: max_bank_rows="auto" under aspect / tiles: the bank's size limit (predict cost per pixel stays fixed)
BANK_ROWS_LIMIT = 20_000


@register_model(
    "patchcore",
    description="PatchCore: memory bank of CNN patch features, greedy coreset, nearest-neighbour scoring (full/few-shot)",
    paper="Roth et al., Towards Total Recall in Industrial Anomaly Detection, CVPR 2022",
    pretrained={"wide_resnet50_2": "torchvision IMAGENET1K_V1", "tf_efficientnet_lite0": "embedded (pip package)"},
)
class PatchCore(Detector):
    """PatchCore with the official code's defaults (spec §2.9).

    Settings: backbone/layers/weights (WRN-50-2 layer2+3, torchvision IMAGENET1K_V1); geometry (the shared layer,
    `anomalens.data.geometry`): "paper" = shorter side `resize` (256) → centre crop `crop` (224), the spec's; "whole" =
    the whole image squashed to resize × resize (or to a given [H, W]); "aspect" = shorter side `resize`, aspect kept,
    no crop; "tiles" = the image at `scale` × native size in `tile`-px tiles (default `resize`) overlapping by `overlap`
    px (default a quarter tile), image score = the largest patch score of any tile; "auto" (default) = "paper" on
    MVTec AD / VisA, else aspect or tiles by the images' size — the resolved value is `geometry_`, saved with the model;
    coreset_chunk: "auto" = exact greedy coreset under paper/whole, and per chunk of `COARSE_CHUNK_ROWS` rows under
    aspect/tiles (cost linear in the pixels instead of quadratic), an integer = rows per chunk, None = exact;
    max_bank_rows: "auto" = no limit under paper/whole, `BANK_ROWS_LIMIT` under aspect/tiles (so predict costs the
    same per pixel however many pixels were fitted), an integer, or None = ⌊coreset_ratio · N⌋ always;
    patch_size p = 3; pretrain_dim 1024 → target_dim d = 1024 (aggregation "official"; "anomalib" = anomalib's plain
    3×3 mean and concatenation; "auto" = official, except backbones measured otherwise, `BACKBONE_AGGREGATION`); coreset_ratio (0.1) with projection_dim d* = 128
    and coreset_start 'mean10'; exact kNN ('faiss' or 'torch'), num_neighbors k = 1; distance 'l2' or
    'squared_l2'; image_score 'max' or 'reweighted' (Eq. 7, b = reweight_b); sigma = 4 map smoothing;
    bank_dtype 'float32' or 'float16'; knn 'ivfpq' for approximate search on huge banks.

    Ensembles (paper Table 4): pass a list of backbones (and optionally a list of layer lists), e.g.
    `backbone=["wide_resnet101_2", "resnext101_32x8d", "densenet201"], target_dim=384, coreset_ratio=0.01,
    resize=366, crop=320`. Each member keeps its own bank; scores and maps are min–max normalised per member
    and averaged. The normalisation uses the statistics of the normal images given to `calibrate` when it
    has run, else those of the images being predicted (the official code's transductive protocol); a single
    predicted image without `calibrate` uses statistics fixed at fit: each training image scored against its
    member's bank without that image's own rows (leave-one-image-out; needs ≥ 2 training images).

    num_neighbors k > 1: the patch score averages the k SQUARED distances as the official code does (then the
    square root for distance='l2'); knn_average='distance' averages the k distances instead.
    """

    setting_ranges = {"coreset_ratio": "(0, 1]", "patch_size": "[1, inf)", "pretrain_dim": "[1, inf)", "target_dim": "[1, inf)",
                      "projection_dim": "[1, inf)", "num_neighbors": "[1, inf)", "reweight_b": "[1, inf)", "sigma": "[0, inf)",
                      "resize": "[1, inf)", "crop": "[1, inf)"}

    def __init__(
        self,
        backbone: Union[str, Sequence[str]] = "wide_resnet50_2",
        layers: Optional[Sequence] = None,
        weights: Optional[str] = "imagenet",
        geometry: Literal["auto", "paper", "whole", "aspect", "tiles"] = "auto",
        resize: Union[int, Sequence[int], None] = 256,
        crop: Optional[int] = 224,
        tile: Optional[int] = None,
        overlap: Optional[int] = None,
        scale: float = 1.0,
        patch_size: int = 3,
        pretrain_dim: int = 1024,
        target_dim: int = 1024,
        aggregation: str = "auto",
        coreset_ratio: float = 0.1,
        projection_dim: int = 128,
        coreset_start: str = "mean10",
        coreset_prune: bool = False,
        coreset_chunk: Union[int, str, None] = "auto",
        max_bank_rows: Union[int, str, None] = "auto",
        seed: int = 0,
        knn: str = "faiss",
        num_neighbors: int = 1,
        knn_average: str = "squared",
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
        self.geometry = geometry
        self.resize = resize
        self.crop = crop
        self.tile = tile
        self.overlap = overlap
        self.scale = scale
        self.patch_size = patch_size
        self.pretrain_dim = pretrain_dim
        self.target_dim = target_dim
        self.aggregation = aggregation
        self.coreset_ratio = coreset_ratio
        self.projection_dim = projection_dim
        self.coreset_start = coreset_start
        self.coreset_prune = coreset_prune
        self.coreset_chunk = coreset_chunk
        self.max_bank_rows = max_bank_rows
        self.seed = seed
        self.knn = knn
        self.num_neighbors = num_neighbors
        self.knn_average = knn_average
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
    def paper_transform(self) -> ImageTransform:
        """Shorter side `resize` → centre crop `crop`, bilinear, ImageNet mean/std (spec §2.2)."""
        return ImageTransform(self.resize, self.crop, IMAGENET_MEAN, IMAGENET_STD, "bilinear")

    @property
    def geometry_size(self):
        """S = `resize` (a CNN takes any input size, so there is no fixed input side)."""
        if self.resize is None:
            return 256
        return tuple(self.resize) if isinstance(self.resize, (list, tuple)) else int(self.resize)

    def aggregation_for(self, backbone: str) -> str:
        """The aggregation of one member: the setting, or with "auto" the measured default of its backbone
        (`BACKBONE_AGGREGATION`; the paper's "official" for every backbone not measured, WRN-50-2 included)."""
        if self.aggregation != "auto":
            return self.aggregation
        return BACKBONE_AGGREGATION.get(backbone, "official")

    def _coreset_chunk(self) -> Optional[int]:
        """Rows per greedy-coreset chunk: None = one exact selection over every row."""
        if self.coreset_chunk == "auto":
            return COARSE_CHUNK_ROWS if self.resolved_geometry in ("aspect", "tiles") else None
        return None if self.coreset_chunk is None else int(self.coreset_chunk)

    def _bank_limit(self) -> Optional[int]:
        """The most rows a member's bank keeps: None = ⌊coreset_ratio · N⌋ whatever N."""
        if self.max_bank_rows == "auto":
            return BANK_ROWS_LIMIT if self.resolved_geometry in ("aspect", "tiles") else None
        return None if self.max_bank_rows is None else int(self.max_bank_rows)

    def _validate(self) -> None:
        if self.distance not in ("l2", "squared_l2"):
            raise ValueError(f"distance must be 'l2' or 'squared_l2', got {self.distance!r}")
        if self.knn_average not in ("squared", "distance"):
            raise ValueError(f"knn_average must be 'squared' or 'distance', got {self.knn_average!r}")
        if self.image_score not in ("max", "reweighted"):
            raise ValueError(f"image_score must be 'max' or 'reweighted', got {self.image_score!r}")
        if self.knn not in ("faiss", "torch", "ivfpq"):
            raise ValueError(f"knn must be 'faiss', 'torch' or 'ivfpq', got {self.knn!r}")
        for name in ("coreset_chunk", "max_bank_rows"):
            v = getattr(self, name)
            if not (v in ("auto", None) or (isinstance(v, int) and not isinstance(v, bool) and v >= 1000)):
                raise ValueError(f"{name} must be 'auto', None or a number of rows >= 1000, got {v!r}")
        if self.bank_dtype not in _DTYPES:
            raise ValueError(f"bank_dtype must be one of {sorted(_DTYPES)}, got {self.bank_dtype!r}")
        coreset_size(1, self.coreset_ratio)  # validates the ratio
        if not isinstance(self.backbone, str) and self.resolved_geometry == "tiles":
            raise ValueError("a PatchCore ensemble normalises each member over whole images; use geometry 'paper', "
                             "'whole' or 'aspect' (or one backbone with tiles)")

    def members(self) -> list[tuple[str, Optional[list[str]]]]:
        """(backbone, layers) of every ensemble member (one for a single backbone)."""
        if isinstance(self.backbone, str):
            return [(self.backbone, list(self.layers) if self.layers else None)]
        names = list(self.backbone)
        if self.layers is None:
            return [(n, None) for n in names]
        if len(self.layers) != len(names) or not all(isinstance(l, (list, tuple)) for l in self.layers):
            raise ValueError("with a list of backbones, layers must be None or one list of layer names per backbone")
        return [(n, list(l)) for n, l in zip(names, self.layers)]

    def _feature_models(self) -> list[PatchFeatures]:
        models = getattr(self, "_feature_model_list", None)
        if models is None:
            models = []
            for name, layers in self.members():
                extractor = create_cnn(name, layers, self.weights, init_seed=self.seed).to(self.device_)
                with torch.no_grad():
                    probe = extractor(torch.zeros(1, 3, 64, 64, device=self.device_))
                channels = [v.shape[1] for v in probe.values()]
                models.append(PatchFeatures(extractor, channels, self.patch_size, self.pretrain_dim, self.target_dim,
                                            self.aggregation_for(name)))
            self._feature_model_list = models
        return models

    def _features(self, member: int = 0) -> PatchFeatures:
        return self._feature_models()[member]

    def setup(self) -> "PatchCore":
        """Build the backbone(s) now (resolving their weights)."""
        self._feature_models()
        return self

    def embed(self, images: torch.Tensor, member: int = 0) -> torch.Tensor:
        """(B, 3, H, W) normalised images -> (B, d, h, w) locally aware patch features of one member."""
        with torch.inference_mode():
            return self._features(member)(images.to(self.device_))

    # ------------------------------------------------------------------ fit
    def _fit(self, dataset: ImageDataset) -> None:
        """Stream patch features to disk, project them on the fly to d*, select the coreset, gather its rows.

        Resident during fit: the projected bank (N × d* float32) per member, one batch, and the coreset at
        the end — never the full N × d bank (that lives in a temporary file under `feature_dir`).
        """
        self._validate()
        n_members = len(self._feature_models())
        work = Path(tempfile.mkdtemp(prefix="patchcore-", dir=self.feature_dir))
        streams: list[_BankStream] = []
        try:
            streams = [_BankStream(work / f"features{i}.bin", self) for i in range(n_members)]
            size = None
            for images in self._input_batches(dataset, "patchcore: features"):
                size = tuple(images.shape[-2:])
                for i, stream in enumerate(streams):
                    stream.add(self.embed(images, i), len(dataset))
                release_memory()  # batch temporaries go back to the OS: peak RSS stays flat as N grows
            banks, indices = [], []
            for stream in streams:
                bank, idx = stream.select()
                banks.append(bank)
                indices.append(idx)
            self.memory_banks_, self.coreset_indices_list_ = banks, indices
            self.feature_shape_ = streams[0].shape
            self.member_stats_ = None
            self.fit_stats_ = self._leave_one_out_stats(streams, size) if n_members > 1 else None
        finally:
            for stream in streams:
                stream.close()
            shutil.rmtree(work, ignore_errors=True)
        self._index = None

    @property
    def memory_bank_(self) -> torch.Tensor:
        """The memory bank M_C of the first (or only) member."""
        return self.memory_banks_[0]

    @memory_bank_.setter
    def memory_bank_(self, bank: torch.Tensor) -> None:
        self.memory_banks_[0] = bank
        self._index = None

    @property
    def coreset_indices_(self) -> torch.Tensor:
        """Indices into the streamed feature rows that form M_C (first member), in selection order."""
        return self.coreset_indices_list_[0]

    # ------------------------------------------------------------------ predict
    def _search(self, queries: torch.Tensor, k: int, member: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        bank = self.memory_banks_[member]
        if self.knn == "ivfpq":
            indexes = getattr(self, "_index", None) or {}
            if member not in indexes:
                indexes[member] = ApproximateIndex(bank, seed=self.seed)
            self._index = indexes
            return indexes[member].search(queries, k)
        if (self.knn == "torch" or queries.device.type != "cpu") and bank.device != queries.device:
            bank = self.memory_banks_[member] = bank.to(queries.device)  # once: the bank then stays on the device
        return knn(queries, bank, k, backend=self.knn)

    def _dist(self, sq: torch.Tensor) -> torch.Tensor:
        return sq if self.distance == "squared_l2" else sq.sqrt()

    def _neighbour_mean(self, sq: torch.Tensor) -> torch.Tensor:
        """(Q, k) squared distances -> (Q,) patch scores: mean of the squared distances (the official code), then
        the square root for 'l2'; or with knn_average='distance' the mean of the distances."""
        if self.knn_average == "squared":
            return self._dist(sq.mean(1))
        return self._dist(sq).mean(1)

    def _row_scores(self, q: torch.Tensor, B: int, h: int, w: int, member: int, bank: Optional[torch.Tensor] = None):
        """Patch features (B·h·w, d) -> (B, h, w) patch scores and NN indices, against the member's bank (or `bank`)."""
        if bank is None:
            sq, idx = self._search(q, self.num_neighbors, member)
        else:
            sq, idx = knn(q, bank, self.num_neighbors, backend="torch" if self.knn == "torch" else "faiss")
        return self._neighbour_mean(sq).view(B, h, w), idx

    def patch_scores(self, images: torch.Tensor, member: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, h, w) patch scores s(m_test) (Eq. 6), the patch features (B·h·w, d) and NN indices (B·h·w, k)."""
        f = self.embed(images, member)
        B, d, h, w = f.shape
        q = f.permute(0, 2, 3, 1).reshape(-1, d).float()
        scores, idx = self._row_scores(q, B, h, w, member)
        return scores, q, idx

    def _outputs(self, scores: torch.Tensor, q: torch.Tensor, idx: torch.Tensor, size: tuple, member: int,
                 bank: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Image scores (B,) float64 and smoothed maps (B, H, W) from patch scores (B, h, w)."""
        B, h, w = scores.shape
        s_star, arg = scores.view(B, -1).max(1)
        if self.image_score == "reweighted":
            image = self._reweight(s_star, q.view(B, h * w, -1), idx.view(B, h * w, -1), arg, member, bank)
        else:
            image = s_star
        maps = gaussian_blur(resize_map(scores, size, mode="bilinear", align_corners=False), self.sigma)
        return image.double().cpu(), maps.float().cpu()

    def _member_outputs(self, images: torch.Tensor, member: int) -> tuple[torch.Tensor, torch.Tensor]:
        scores, q, idx = self.patch_scores(images, member)
        return self._outputs(scores, q, idx, tuple(images.shape[-2:]), member)

    def _leave_one_out_stats(self, streams: list["_BankStream"], size: Optional[tuple]) -> Optional[list[list[float]]]:
        """Per-member [s_lo, s_hi, m_lo, m_hi] over the training images, each scored (image score and map) against its
        member's bank without the rows that came from that image; None with fewer than 2 training images."""
        stats = []
        for member, stream in enumerate(streams):
            d, h, w = stream.shape
            n_images = stream.store.n_rows // (h * w)
            owner = self.coreset_indices_list_[member] // (h * w)
            bank = self.memory_banks_[member]
            s_all, m_lo, m_hi = [], float("inf"), float("-inf")
            for i in range(n_images):
                keep = owner != i
                if n_images < 2 or not bool(keep.any()):
                    return None
                q = torch.from_numpy(stream.store.gather(np.arange(i * h * w, (i + 1) * h * w))).float().to(self.device_)
                bank_i = bank[keep].to(q.device)
                scores, idx = self._row_scores(q, 1, h, w, member, bank_i)
                image, maps = self._outputs(scores, q, idx, size or (h, w), member, bank_i)
                s_all.append(float(image[0]))
                m_lo, m_hi = min(m_lo, float(maps.min())), max(m_hi, float(maps.max()))
            stats.append([min(s_all), max(s_all), m_lo, m_hi])
        return [list(v) for v in zip(*stats)]

    def _predict_batch(self, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        outs = [self._member_outputs(images, i) for i in range(len(self.memory_banks_))]
        if len(outs) == 1:
            return outs[0][0].numpy(), outs[0][1].numpy()
        return torch.stack([o[0] for o in outs], 1).numpy(), torch.stack([o[1] for o in outs], 1).numpy()

    def _postprocess(self, scores: np.ndarray, maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Ensembles: per-member min–max normalisation (calibration statistics, else the predicted set), then mean."""
        if scores.ndim == 1 or getattr(self, "_raw_members", False):
            return scores, maps
        stats = self.member_stats_
        if stats is None and scores.shape[0] < 2:  # min–max over one image would map every score to 0
            stats = getattr(self, "fit_stats_", None)
            if stats is None:
                raise DataError("an ensemble scoring a single image needs normalisation statistics: call calibrate() with "
                                "normal images, predict several images at once, or fit on at least 2 images")
        if stats is None:
            stats = _member_minmax(scores, maps)
        s_lo, s_hi, m_lo, m_hi = (np.asarray(v) for v in stats)
        fused_s = ((scores - s_lo) / np.maximum(s_hi - s_lo, 1e-12)).mean(1)
        fused_m = ((maps - m_lo[:, None, None]) / np.maximum(m_hi - m_lo, 1e-12)[:, None, None]).mean(1)
        return fused_s, fused_m.astype(np.float32)

    def calibrate(self, normal_data, fpr: float = 0.01) -> "PatchCore":
        """As `Detector.calibrate`; ensembles first fix their per-member normalisation on these normal images."""
        self._check_fitted("calibrate")
        if len(self.memory_banks_) > 1:
            self._raw_members = True
            try:
                raw = self.predict(normal_data)
            finally:
                self._raw_members = False
            self.member_stats_ = [v.tolist() for v in _member_minmax(raw.image_scores, raw.anomaly_maps)]
        return super().calibrate(normal_data, fpr)

    def _reweight(self, s_star, q, idx, arg, member: int = 0, bank: Optional[torch.Tensor] = None) -> torch.Tensor:
        bank = self.memory_banks_[member] if bank is None else bank
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
        out = {}
        for i, (bank, idx) in enumerate(zip(self.memory_banks_, self.coreset_indices_list_)):
            out[f"memory_bank.{i}"] = bank
            out[f"coreset_indices.{i}"] = idx
        return out

    def _state_extra(self) -> dict:
        return {"feature_shape": list(self.feature_shape_), "n_members": len(self.memory_banks_),
                "member_stats": self.member_stats_,
                "fit_stats": getattr(self, "fit_stats_", None)}

    def _load_state(self, tensors: dict[str, torch.Tensor], extra: dict) -> None:
        n = int(extra.get("n_members", 1))
        self.memory_banks_ = [tensors[f"memory_bank.{i}"] for i in range(n)]  # memory-mapped: not copied into RAM
        self.coreset_indices_list_ = [tensors[f"coreset_indices.{i}"] for i in range(n)]
        self.feature_shape_ = tuple(extra.get("feature_shape", ()))
        self.member_stats_ = extra.get("member_stats")
        self.fit_stats_ = extra.get("fit_stats")
        self._index = None


def _member_minmax(scores: np.ndarray, maps: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-member (min, max) of image scores (N, M) and of all map pixels (N, M, H, W)."""
    return scores.min(0), scores.max(0), maps.min(axis=(0, 2, 3)), maps.max(axis=(0, 2, 3))


class _BankStream:
    """One member's fit stream: rows to an on-disk store, their d*-projection kept in RAM, then the coreset."""

    def __init__(self, path: Path, model: PatchCore):
        self.path, self.model = path, model
        self.dtype = _DTYPES[model.bank_dtype]
        self.store: Optional[RowStore] = None
        self.projected: Optional[torch.Tensor] = None
        self.proj: Optional[torch.Tensor] = None
        self.shape: tuple[int, int, int] = (0, 0, 0)

    def add(self, f: torch.Tensor, n_images: int) -> None:
        """Append a batch of patch features (B, d, h, w)."""
        B, d, h, w = f.shape
        rows = f.permute(0, 2, 3, 1).reshape(-1, d).to(self.dtype)
        if self.store is None:
            m = self.model
            self.store = RowStore(self.path, d, np.float16 if self.dtype == torch.float16 else np.float32)
            self.proj = random_projection(d, m.projection_dim, m.seed).to(rows.device) if d > m.projection_dim else None
            width = self.proj.shape[1] if self.proj is not None else d
            self.projected = torch.empty(n_images * h * w, width, dtype=torch.float32)  # the resident part
            self.shape = (d, h, w)
        start = self.store.n_rows
        if start + rows.shape[0] > self.projected.shape[0]:  # images of another size (aspect kept, no crop): grow
            more = max(rows.shape[0], self.projected.shape[0] // 2)
            self.projected = torch.cat([self.projected, self.projected.new_empty(more, self.projected.shape[1])])
        self.store.append(rows.cpu().numpy())
        # project exactly what is stored, so selection sees the bank's own values
        self.projected[start : self.store.n_rows] = (rows.float() @ self.proj if self.proj is not None else rows.float()).cpu()

    def select(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(coreset rows in selection order, their indices); frees the projection (`close` then frees the file)."""
        m, n_rows = self.model, self.store.n_rows
        if m.coreset_ratio >= 1.0:
            idx = torch.arange(n_rows)
        else:
            idx = chunked_select(self.projected[:n_rows], m.coreset_ratio, m._coreset_chunk(), m.device_, seed=m.seed,
                                 start=m.coreset_start, prune=m.coreset_prune, limit=m._bank_limit()).cpu()
        self.projected = None
        bank = torch.from_numpy(self.store.gather(idx.numpy()))
        return bank, idx

    def close(self) -> None:
        if self.store is not None:
            self.store.close()
