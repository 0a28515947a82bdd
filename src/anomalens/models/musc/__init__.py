"""MuSc (Li et al., ICLR 2024): zero-shot mutual scoring of unlabeled images, LNAMD, MSM, RsCIN."""
from .estimator import MuSc
from .torch_model import interval_k, lnamd, mutual_min_distances, msm_scores

__all__ = ["MuSc", "interval_k", "lnamd", "mutual_min_distances", "msm_scores"]
