"""MuSc (Li et al., ICLR 2024): zero-shot mutual scoring of unlabeled images, LNAMD, MSM, RsCIN."""
from .estimator import MuSc
from .torch_model import LayerFeatures, interval_k, lnamd, msm_scores, mutual_min_distances, reference_distances

__all__ = [
    "MuSc", "LayerFeatures", "interval_k", "lnamd", "msm_scores", "mutual_min_distances", "reference_distances",
]
