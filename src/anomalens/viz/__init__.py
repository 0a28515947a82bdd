"""Overlays: the whole image, its heat map, score, verdict and colour bar; ground-truth contour when given."""
from .files import OverlayWriter, map_scale, overlay_name, overlay_root, write_overlays
from .overlay import colorize, overlay, panel_size, render_overlay, save_overlay, verdict_text

__all__ = ["colorize", "overlay", "panel_size", "render_overlay", "save_overlay", "verdict_text", "OverlayWriter",
           "map_scale", "overlay_name", "overlay_root", "write_overlays"]
