"""`evaluate(model, dataset)`: predict, then the one metric suite; a report that prints as a table and saves as JSON.

Two evaluation-path choices live here, so the CLI, the benchmark and the Python API share one route:
- the image score the metrics use: a model's `evaluation_scores(prediction)` hook (CLIP-AD's per-category min–max sum)
  or a caller's `score_hook(model, prediction)`; the model's own scores' image metrics stay in `Report.raw_metrics`;
- the ground-truth mask geometry (`mask_geometry`): "ours" (the mask through the model's own transform, as predicted)
  or "official" (spec musc.md §2.2 / §4.5: the 0/255 mask bilinear-resized with PIL to the map size, then == 255
  for MVTec AD — only fully covered pixels — and > 0 for VisA).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Optional

import numpy as np

from . import metrics
from .data import DataLike, as_dataset
from .detector import Detector, Prediction
from .errors import AnomalensError, DataError

MASK_GEOMETRIES = ("ours", "official")
#: official binarisation of the bilinear-resized 0/255 mask per dataset kind (spec musc.md §2.2)
OFFICIAL_MASK_RULES = {"mvtec": "eq255", "visa": "gt0"}

ScoreHook = Callable[[Any, Prediction], Optional[np.ndarray]]


@dataclass
class Report:
    """Metrics of one model on one labelled dataset (category).

    `prediction` is what the metrics were computed on: its image scores are the evaluation scores (the model's own
    ones then in `prediction.components["model_score"]`, image metrics of those in `raw_metrics`) and its masks
    follow `mask_geometry`."""

    model: str
    category: str
    metrics: dict
    n_images: int
    n_anomalous: int
    seconds: float
    info: dict = field(default_factory=dict)
    prediction: Optional[Prediction] = field(default=None, repr=False)
    raw_metrics: dict = field(default_factory=dict)
    mask_geometry: str = "ours"

    def to_dict(self) -> dict:
        """JSON-ready content (no arrays)."""
        out = {"model": self.model, "category": self.category, "metrics": self.metrics, "n_images": self.n_images,
               "n_anomalous": self.n_anomalous, "seconds": round(self.seconds, 3), "mask_geometry": self.mask_geometry,
               "info": self.info}
        if self.raw_metrics:
            out["raw_metrics"] = self.raw_metrics
        return out

    def __str__(self) -> str:
        vals = "  ".join(f"{k}={_fmt(v)}" for k, v in self.metrics.items())
        tag = " [random-init backbone]" if self.info.get("random_init") else ""
        return f"{self.model} on {self.category or 'dataset'} ({self.n_images} images){tag}: {vals}"


def _fmt(v: float) -> str:
    return "nan" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"


def model_evaluation_scores(model, prediction: Prediction) -> Optional[np.ndarray]:
    """The model's evaluation-path image scores (its `evaluation_scores(prediction)` hook), or None without one."""
    hook = getattr(model, "evaluation_scores", None)
    return None if hook is None else hook(prediction)


def dataset_kind(ds) -> Optional[str]:
    """"mvtec" / "visa" for those datasets, else None."""
    from .data import MVTecAD, VisA

    return "visa" if isinstance(ds, VisA) else "mvtec" if isinstance(ds, MVTecAD) else None


def official_mask(mask: np.ndarray, size: tuple[int, int], rule: str, transform=None) -> np.ndarray:
    """Official-code mask geometry: the boolean (H0, W0) mask as a 0/255 'L' image through `transform`'s resize / crop
    with PIL bilinear (what torchvision's Resize does to a PIL mask), then to `size` (H, W) if it differs, binarised
    with `rule`: "eq255" (only pixels still fully 255: MVTec AD, the float mask cast to int) or "gt0" (VisA)."""
    from PIL import Image
    from torchvision.transforms import InterpolationMode

    if rule not in ("eq255", "gt0"):
        raise ValueError(f"mask rule must be 'eq255' or 'gt0', got {rule!r}")
    img = Image.fromarray(np.where(np.asarray(mask, dtype=bool), 255, 0).astype(np.uint8), mode="L")
    if transform is not None:
        img = transform._geometry(img, InterpolationMode.BILINEAR, antialias=True)
    h, w = int(size[0]), int(size[1])
    if img.size != (w, h):
        img = img.resize((w, h), Image.BILINEAR)
    arr = np.asarray(img)
    return arr == 255 if rule == "eq255" else arr > 0


def official_masks(ds, prediction: Prediction, transform=None) -> np.ndarray:
    """(N, H, W) official-geometry masks of `ds`'s images at the prediction's map size (see `official_mask`)."""
    from .data import load_mask
    from .data.image_io import image_size

    kind = dataset_kind(ds)
    if kind is None:
        raise DataError(f"mask_geometry='official' is defined for MVTec AD and VisA datasets; {ds.source} is neither")
    if list(prediction.paths) != [r.path for r in ds.records]:
        raise AnomalensError("the prediction's images are not the dataset's, in order: cannot re-read their masks")
    size = prediction.anomaly_maps.shape[-2:]
    out = np.zeros((len(ds.records), *size), dtype=bool)
    for i, rec in enumerate(ds.records):
        if rec.mask_path is not None:
            m = load_mask(rec.mask_path)
        else:
            w, h = image_size(rec.path)
            m = np.zeros((h, w), dtype=bool)
        out[i] = official_mask(m, size, OFFICIAL_MASK_RULES[kind], transform)
    return out


def evaluate(model: Detector, dataset: DataLike, binned: bool = False, mask_geometry: str = "ours",
             score_hook: Optional[ScoreHook] = None) -> Report:
    """Predict on a labelled dataset and compute every metric (pixel metrics when the dataset has masks).

    mask_geometry: "ours" (the masks as the model's transform made them) or "official" (MuSc's official code:
    bilinear resize to the map size, then == 1 on MVTec AD, > 0 on VisA; spec musc.md §4.5).
    score_hook(model, prediction) -> image scores for the image metrics, or None to keep the model's; by default the
    model's own `evaluation_scores(prediction)` hook when it has one (CLIP-AD's per-category min–max sum)."""
    if mask_geometry not in MASK_GEOMETRIES:
        raise ValueError(f"mask_geometry must be one of {MASK_GEOMETRIES}, got {mask_geometry!r}")
    ds = as_dataset(dataset)
    if not ds.has_labels:
        raise DataError(f"evaluate() needs labelled images (e.g. an MVTec AD test split); {ds.source} has none")
    t0 = time.perf_counter()
    pred = model.predict(ds)
    seconds = time.perf_counter() - t0
    if mask_geometry == "official" and pred.masks is not None:
        pred = replace(pred, masks=official_masks(ds, pred, pred.geometry or getattr(model, "transform", None)))
    raw_metrics: dict = {}
    scores = (score_hook or model_evaluation_scores)(model, pred)
    if scores is not None:
        raw_metrics = metrics.image_metrics(pred.image_scores, pred.gt_labels)
        pred = replace(pred, image_scores=np.asarray(scores, dtype=np.float64), labels=None, threshold=None,
                       components={**pred.components, "model_score": np.asarray(pred.image_scores)})
    masks = pred.masks
    values = metrics.compute(pred.image_scores, pred.gt_labels, pred.anomaly_maps if masks is not None else None, masks, binned=binned)
    category = getattr(ds, "category", "") or (ds.records[0].category if ds.records else "")
    info = {**pred.info, "mask_geometry": mask_geometry}
    if scores is not None:
        info["image_score_metrics"] = "evaluation hook" if score_hook is None else "caller's score hook"
    return Report(model.name, category, values, len(pred), int((pred.gt_labels == 1).sum()), seconds, info, pred,
                  raw_metrics, mask_geometry)
