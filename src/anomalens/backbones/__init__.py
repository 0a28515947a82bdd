"""Feature extractors: CNN taps (torchvision / timm) and open_clip models with per-layer tokens; weight resolution."""
from .clip import ClipBackbone, create_clip, encode_text_truncated
from .cnn import CNN_SPECS, CNNFeatureExtractor, create_cnn
from .weights import cache_dir, load_state_dict_file, resolve_file, weights_dir

__all__ = ["ClipBackbone", "create_clip", "encode_text_truncated", "CNN_SPECS", "CNNFeatureExtractor", "create_cnn", "cache_dir",
           "load_state_dict_file", "resolve_file", "weights_dir"]
