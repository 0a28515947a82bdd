"""Image-level metrics: AUROC, AP and F1-max of image scores against image labels."""
from __future__ import annotations

import numpy as np

from . import curves


def image_groups(scores, labels) -> curves.RankGroups:
    """Exact ranking groups of image scores."""
    return curves.group_exact(np.asarray(scores, dtype=np.float64), np.asarray(labels))


def image_metrics(scores, labels) -> dict[str, float]:
    """image_auroc, image_ap, image_f1max (NaN when one class is absent)."""
    g = image_groups(scores, labels)
    return {"image_auroc": curves.auroc(g), "image_ap": curves.average_precision(g), "image_f1max": curves.f1_max(g)}


def auroc(scores, labels) -> float:
    """Image AUROC."""
    return curves.auroc(image_groups(scores, labels))


def average_precision(scores, labels) -> float:
    """Image AP."""
    return curves.average_precision(image_groups(scores, labels))


def f1_max(scores, labels) -> float:
    """Image F1-max."""
    return curves.f1_max(image_groups(scores, labels))
