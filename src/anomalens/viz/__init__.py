"""Overlays: anomaly heat map over the image, ground-truth contour when given."""
from .overlay import colorize, overlay, save_overlay

__all__ = ["colorize", "overlay", "save_overlay"]
