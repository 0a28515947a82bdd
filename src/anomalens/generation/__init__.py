"""Anomaly image generation: AnomalyDiffusion (Hu et al., AAAI 2024) as a diffusers-style pipeline.

Heavy dependencies (diffusers, transformers) are imported when a component is built, not at import time.
"""
from .aar import AARAttnProcessor, AARState, dilate, dilation_radius, install_aar, official_weights, paper_weights
from .components import BaseComponents, build_tiny, load_base
from .config import GeneratorConfig
from .data import augment_batch, defect_pairs, split_ids, training_pairs
from .pipeline import AnomalyDiffusionOutput, AnomalyDiffusionPipeline, binarize_mask_images, border_ok, latent_mask
from .sae import SpatialEncoder, TokenEmbeddings, splice_tokens
from .train import GeneratorTrainer, masked_diffusion_loss, resolve_config, train

__all__ = [
    "AARAttnProcessor", "AARState", "dilate", "dilation_radius", "install_aar", "official_weights", "paper_weights",
    "BaseComponents", "build_tiny", "load_base", "GeneratorConfig", "augment_batch", "defect_pairs", "split_ids",
    "training_pairs", "AnomalyDiffusionOutput", "AnomalyDiffusionPipeline", "binarize_mask_images", "border_ok",
    "latent_mask", "SpatialEncoder", "TokenEmbeddings", "splice_tokens", "GeneratorTrainer", "masked_diffusion_loss",
    "resolve_config", "train",
]
