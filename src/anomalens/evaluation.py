"""`evaluate(model, dataset)`: predict, then the one metric suite; a report that prints as a table and saves as JSON."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Optional

from . import metrics
from .data import DataLike, as_dataset
from .detector import Detector, Prediction
from .errors import DataError


@dataclass
class Report:
    """Metrics of one model on one labelled dataset (category)."""

    model: str
    category: str
    metrics: dict
    n_images: int
    n_anomalous: int
    seconds: float
    info: dict = field(default_factory=dict)
    prediction: Optional[Prediction] = field(default=None, repr=False)

    def to_dict(self) -> dict:
        """JSON-ready content (no arrays)."""
        return {"model": self.model, "category": self.category, "metrics": self.metrics, "n_images": self.n_images,
                "n_anomalous": self.n_anomalous, "seconds": round(self.seconds, 3), "info": self.info}

    def __str__(self) -> str:
        vals = "  ".join(f"{k}={_fmt(v)}" for k, v in self.metrics.items())
        tag = " [random-init backbone]" if self.info.get("random_init") else ""
        return f"{self.model} on {self.category or 'dataset'} ({self.n_images} images){tag}: {vals}"


def _fmt(v: float) -> str:
    return "nan" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"


def evaluate(model: Detector, dataset: DataLike, binned: bool = False) -> Report:
    """Predict on a labelled dataset and compute every metric (pixel metrics when the dataset has masks)."""
    ds = as_dataset(dataset)
    if not ds.has_labels:
        raise DataError(f"evaluate() needs labelled images (e.g. an MVTec AD test split); {ds.source} has none")
    t0 = time.perf_counter()
    pred = model.predict(ds)
    seconds = time.perf_counter() - t0
    masks = pred.masks
    values = metrics.compute(pred.image_scores, pred.gt_labels, pred.anomaly_maps if masks is not None else None, masks, binned=binned)
    category = getattr(ds, "category", "") or (ds.records[0].category if ds.records else "")
    return Report(model.name, category, values, len(pred), int((pred.gt_labels == 1).sum()), seconds, pred.info, pred)
