"""Shared numerics: exact kNN (faiss / torch), greedy coreset, patch pooling, Gaussian smoothing."""
from .coreset import coreset_size, greedy_coreset, greedy_select, project, random_projection
from .knn import ApproximateIndex, knn, knn_faiss, knn_torch
from .pooling import PatchAggregator, adaptive_pool_matrix, aggregate_anomalib, aggregate_reference
from .smoothing import gaussian_blur, gaussian_kernel1d

__all__ = ["coreset_size", "greedy_coreset", "greedy_select", "project", "random_projection", "ApproximateIndex", "knn",
           "knn_faiss", "knn_torch", "PatchAggregator", "adaptive_pool_matrix", "aggregate_anomalib", "aggregate_reference",
           "gaussian_blur", "gaussian_kernel1d"]
