"""WinCLIP / WinCLIP+ (Jeong et al., CVPR 2023): zero- and few-normal-shot CLIP anomaly detection."""
from .estimator import WinCLIP
from .prompts import build_prompts
from .torch_model import anomaly_probability, harmonic_aggregate, window_embeddings, window_indices

__all__ = ["WinCLIP", "build_prompts", "anomaly_probability", "harmonic_aggregate", "window_embeddings", "window_indices"]
