"""PatchCore (Roth et al., CVPR 2022): memory bank of locally aware patch features, greedy coreset, NN scoring."""
from .estimator import PatchCore
from .torch_model import PatchFeatures, reweighted_score

__all__ = ["PatchCore", "PatchFeatures", "reweighted_score"]
