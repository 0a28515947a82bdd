"""Overlays: colour ramp ordering, blend shape, ground-truth contour drawn on the mask border only."""
from __future__ import annotations

import numpy as np
import pytest

from anomalens.viz import colorize, overlay, save_overlay


def test_colorize_ramp_is_ordered_and_clipped():
    c = colorize(np.array([[-1.0, 0.0, 0.5, 1.0, 2.0]]), 0.0, 1.0)
    assert c.shape == (1, 5, 3) and (c >= 0).all() and (c <= 1).all()
    assert np.allclose(c[0, 0], c[0, 1]) and np.allclose(c[0, 3], c[0, 4])  # clipped at the ends
    assert c[0, 1, 2] > c[0, 1, 0] and c[0, 3, 0] > c[0, 3, 2]  # low = blue, high = red


def test_overlay_draws_contour_on_mask_border(tmp_path):
    img = np.full((32, 32, 3), 0.5)
    amap = np.zeros((32, 32))
    mask = np.zeros((32, 32), bool)
    mask[10:20, 10:20] = True
    out = overlay(img, amap, 0.0, 1.0, mask)
    green = (out[..., 1] > 0.9) & (out[..., 0] < 0.2)
    assert green[10, 15] and green[19, 15] and not green[15, 15] and not green[2, 2]
    p = save_overlay(tmp_path / "o.png", img, amap, 0.0, 1.0, mask, 0.3)
    from PIL import Image

    assert Image.open(p).size == (32 * 2 + 4, 32)
    with pytest.raises(ValueError, match="differ"):
        overlay(img, np.zeros((8, 8)), 0, 1)
