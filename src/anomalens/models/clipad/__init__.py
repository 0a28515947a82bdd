"""CLIP-AD (Chen et al., arXiv 2311.00453): RVS text vectors, staged dual-path SDP, and SDP+ stage adapters."""
from .adapters import read_adapter_file, save_adapters
from .estimator import CLIPAD, clipad_minmax_scores
from .prompts import build_prompts
from .torch_model import StageAdapters, dual_path_forward, feature_surgery, representative_vector

__all__ = ["CLIPAD", "clipad_minmax_scores", "build_prompts", "StageAdapters",
           "dual_path_forward", "feature_surgery", "representative_vector", "read_adapter_file", "save_adapters"]
