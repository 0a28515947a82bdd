"""AnomalyDINO (Damm et al., WACV 2025): few-shot patch-level kNN on DINOv2 features, zero-shot masking, rotations."""
from .estimator import AnomalyDINO, official_masking, official_rotation
from .torch_model import (DINOv2Patches, augment_image, background_mask, hub_interpolate_pos_embed, prepare_image,
                          rotate_image, top_fraction_mean)

__all__ = [
    "AnomalyDINO", "DINOv2Patches", "augment_image", "background_mask", "hub_interpolate_pos_embed", "official_masking",
    "official_rotation", "prepare_image", "rotate_image", "top_fraction_mean",
]
