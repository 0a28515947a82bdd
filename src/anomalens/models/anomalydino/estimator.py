"""The AnomalyDINO estimator: fit builds the memory bank of every (rotated) reference patch, predict scores by exact
1-NN cosine distance, the official scoring path with the forward passes batched."""
from __future__ import annotations

from typing import Literal, Optional

import numpy as np
import torch

from ...data import ImageDataset, ImageTransform
from ...detector import Detector
from ...errors import DataError
from ...ops.knn import knn
from ...registry import register_model
from .backbone import create_dinov2
from .torch_model import (ROTATION_ANGLES, DINOv2Patches, augment_image, background_mask, distance_maps, l2_normalise,
                          prepare_image, to_uint8, top_fraction_mean)

#: the official per-category masking table (utils.py:97-116, 160-163; spec §1.3)
MASKING_MVTEC = {"capsule", "hazelnut", "pill", "screw", "toothbrush"}
MASKING_VISA = {"candle", "capsules", "cashew", "chewinggum", "fryum", "macaroni1", "macaroni2", "pcb1", "pcb2", "pcb3",
                "pcb4", "pipe_fryum"}
#: the `informed` preset's rotation table (utils.py:119-134, 167-168): MVTec hazelnut and screw only, VisA none
ROTATION_INFORMED_MVTEC = {"hazelnut", "screw"}


def official_masking(dataset: str, category: str) -> bool:
    """The official masking flag of a category (False for categories and datasets the table does not list)."""
    return category in {"mvtec": MASKING_MVTEC, "visa": MASKING_VISA}.get(dataset, set())


def official_rotation(dataset: str, category: str, preprocess: str = "agnostic") -> bool:
    """The official rotation flag: `agnostic` rotates every category, `informed` MVTec hazelnut / screw only,
    `masking_only` none."""
    if preprocess == "agnostic":
        return True
    if preprocess == "informed":
        return dataset == "mvtec" and category in ROTATION_INFORMED_MVTEC
    if preprocess == "masking_only":
        return False
    raise ValueError(f"preprocess must be 'agnostic', 'informed' or 'masking_only', got {preprocess!r}")


@register_model(
    "anomalydino",
    description="AnomalyDINO: DINOv2 patch memory bank of k references (rotations), 1-NN cosine, top-1 % score (few-shot)",
    paper="Damm et al., AnomalyDINO: Boosting Patch-based Few-shot Anomaly Detection with DINOv2, WACV 2025",
    pretrained={"vit_small_patch14_dinov2.lvd142m": "lvd142m (released torch.hub / timm checkpoint)"},
)
class AnomalyDINO(Detector):
    """AnomalyDINO with the official code's defaults (spec §2.1).

    f = DINOv2 `backbone` (ViT-S/14 default; B/L/G selectable by timm or hub name), last block + final LayerNorm,
    patch tokens; each image's smaller edge → `resolution` (448, paper also 672) with PIL bicubic, ImageNet
    normalisation, bottom/right crop to a multiple of 14; the positional table interpolated from the released
    37 × 37 grid as torch.hub does ((g + 0.1)/37, bicubic, no antialias).
    fit(k references): M = every patch feature of every reference, each rotated by 0, 45, …, 315° first when
    `rotation` (cv2 bilinear, reflect-101 border, at the native size), L2-normalised, float32; `mask_references`
    masks reference patches too (official flag, off by default).
    predict: d_NN(p) = 1 − cos to the nearest m ∈ M (exact: knn 'faiss' or 'torch'); `masking` = the zero-shot
    background mask of the test image (PCA threshold `mask_threshold`, 1-D dilate/close quirk with
    mask_morphology='1d', the 2-D variant with '2d'); masked patches score 0; image score = mean of the top
    ⌊`top_fraction`·h·w⌋ patch distances; map = the grid bilinear to the original size, Gaussian σ = `sigma`.

    Input geometry: "paper" = the native image (the model resizes itself), so maps are at the original size; "tiles"
    = `tile`-px tiles (default `resolution`) of the native image (× `scale`), each resized by the model as above,
    maps blended, image score the largest tile score; "whole" / "aspect" squash or shorter-side-resize to
    `resolution` first; "auto" = paper on MVTec AD / VisA and on images up to 1.5 × resolution, tiles above.
    weights: None = seeded random init, 'lvd142m' = the released checkpoint, or a local state-dict file.
    """

    setting_ranges = {"resolution": "[14, inf)", "mask_threshold": "(-inf, inf)", "top_fraction": "(0, 1]",
                      "sigma": "[0, inf)"}

    def __init__(
        self,
        backbone: str = "vit_small_patch14_dinov2.lvd142m",
        weights: Optional[str] = "lvd142m",
        resolution: int = 448,
        rotation: bool = True,
        masking: bool = False,
        mask_morphology: str = "1d",
        mask_threshold: float = 10.0,
        mask_references: bool = False,
        top_fraction: float = 0.01,
        sigma: float = 4.0,
        knn: str = "faiss",
        geometry: Literal["auto", "paper", "whole", "aspect", "tiles"] = "auto",
        tile: Optional[int] = None,
        overlap: Optional[int] = None,
        scale: float = 1.0,
        batch_size: int = 8,
        seed: int = 0,
        device: str = "auto",
    ):
        self.backbone = backbone
        self.weights = weights
        self.resolution = resolution
        self.rotation = rotation
        self.masking = masking
        self.mask_morphology = mask_morphology
        self.mask_threshold = mask_threshold
        self.mask_references = mask_references
        self.top_fraction = top_fraction
        self.sigma = sigma
        self.knn = knn
        self.geometry = geometry
        self.tile = tile
        self.overlap = overlap
        self.scale = scale
        self.batch_size = batch_size
        self.seed = seed
        self.device = device

    # ------------------------------------------------------------------ parts
    @property
    def paper_transform(self) -> ImageTransform:
        """The native image as RGB in [0, 1]: resizing, normalisation and crop happen inside the model (PIL, as the
        official code), so every map comes out at the image's own size."""
        return ImageTransform(None, None, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "bicubic")

    @property
    def geometry_size(self) -> int:
        """S = `resolution` (the model resizes any input's smaller edge to it itself)."""
        return int(self.resolution)

    def _validate(self) -> None:
        if self.mask_morphology not in ("1d", "2d"):
            raise ValueError(f"mask_morphology must be '1d' (official) or '2d', got {self.mask_morphology!r}")
        if self.knn not in ("faiss", "torch"):
            raise ValueError(f"knn must be 'faiss' or 'torch', got {self.knn!r}")

    def features_model(self) -> DINOv2Patches:
        """f: the DINOv2 patch-feature module on the model's device (built once)."""
        f = getattr(self, "_features_module", None)
        if f is None:
            f = create_dinov2(self.backbone, self.weights, self.seed).to(self.device_)
            self._features_module = f
        return f

    def setup(self) -> "AnomalyDINO":
        """Build the backbone now (resolving its weights)."""
        self.features_model()
        return self

    def embed(self, images: list[np.ndarray]) -> tuple[torch.Tensor, tuple[int, int]]:
        """uint8 (H, W, 3) images of one size -> raw patch features (n_images, h·w, D) float32 and the grid (h, w);
        forward passes of up to `batch_size` images."""
        f = self.features_model()
        prepared = torch.stack([prepare_image(im, self.resolution) for im in images])
        grid = (prepared.shape[-2] // f.patch_size, prepared.shape[-1] // f.patch_size)
        out = []
        with torch.inference_mode():
            for s in range(0, len(prepared), self.batch_size):
                out.append(f(prepared[s : s + self.batch_size].to(self.device_)).float())
        return torch.cat(out), grid

    def _mask(self, feats: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        return background_mask(feats, grid, self.mask_threshold, morphology=self.mask_morphology)

    # ------------------------------------------------------------------ fit
    def _fit(self, dataset: ImageDataset) -> None:
        """M: the L2-normalised patch features of every reference (each in 8 rotations with `rotation`)."""
        self._validate()
        angles = ROTATION_ANGLES if self.rotation else (0,)
        rows, n_refs = [], 0
        for images in self._input_batches(dataset, "anomalydino: memory bank"):
            views = [v for im in to_uint8(images) for v in augment_image(im, angles)]  # reference i: angles in order
            feats, grid = self.embed(views)
            if self.mask_references and self.masking:
                keep = self._mask(feats, grid)
                rows.append(l2_normalise(feats[keep]).cpu())
            else:
                rows.append(l2_normalise(feats.flatten(0, 1)).cpu())
            n_refs += len(images)
        if not rows or sum(len(r) for r in rows) == 0:
            raise DataError("anomalydino: the references gave no patch features (is every reference patch masked?)")
        self.memory_bank_ = torch.cat(rows).contiguous()
        self.n_references_ = n_refs
        self._bank_device = None

    # ------------------------------------------------------------------ predict
    def _bank(self, device: torch.device) -> torch.Tensor:
        bank = self.memory_bank_
        if self.knn == "torch" or device.type != "cpu":
            cached = getattr(self, "_bank_device", None)
            if cached is None or cached.device != device:
                cached = self._bank_device = bank.to(device=device, dtype=torch.float32)
            return cached
        return bank

    def patch_distances(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) native RGB in [0, 1] -> (B, h, w) d_NN grid (masked cells 0, float64) and the mask (B, h·w)."""
        feats, grid = self.embed(list(to_uint8(images)))
        B, n, D = feats.shape
        mask = self._mask(feats, grid) if self.masking else torch.ones(B, n, dtype=torch.bool, device=feats.device)
        q = l2_normalise(feats.reshape(-1, D))
        backend = "torch" if self.knn == "torch" else "faiss"
        sq, _ = knn(q, self._bank(q.device), 1, backend=backend)
        d = (sq[:, 0].to(q.device).double() / 2.0).view(B, n)  # (squared L2)/2 = 1 − cos on unit vectors
        d = torch.where(mask, d, torch.zeros_like(d))
        return d.view(B, *grid), mask

    def _predict_batch(self, images: torch.Tensor) -> tuple:
        grids, _ = self.patch_distances(images)
        scores = top_fraction_mean(grids.flatten(1), self.top_fraction)
        maps = distance_maps(grids, tuple(images.shape[-2:]), self.sigma)
        return scores.cpu().numpy(), maps.float().cpu().numpy()

    # ------------------------------------------------------------------ persistence
    def _state_tensors(self) -> dict[str, torch.Tensor]:
        return {"memory_bank": self.memory_bank_}

    def _state_extra(self) -> dict:
        return {"n_references": int(self.n_references_)}

    def _load_state(self, tensors: dict[str, torch.Tensor], extra: dict) -> None:
        self.memory_bank_ = tensors["memory_bank"]  # memory-mapped: not copied into RAM
        self.n_references_ = int(extra.get("n_references", 0))
        self._bank_device = None
