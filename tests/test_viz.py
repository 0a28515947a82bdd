"""Overlays: colour ramp ordering, blend shape, ground-truth contour drawn on the mask border only."""
from __future__ import annotations

import os

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

    assert Image.open(p).size[0] > 2 * 32 and Image.open(p).size[1] > 32
    with pytest.raises(ValueError, match="differ"):
        overlay(img, np.zeros((8, 8)), 0, 1)


# ---- issue 10: overlays a person can act on ---------------------------------------------------------------------
def _layout(png_shape, img_hw):
    """(header height, panel h, panel w) of a rendered overlay of an image of img_hw."""
    from anomalens.viz import panel_size

    ph, pw = panel_size(*img_hw)
    return png_shape[0] - ph, ph, pw


@pytest.mark.parametrize("hw", [(40, 100), (90, 30), (1500, 600)])
def test_overlay_shows_the_whole_image_at_its_aspect_ratio(hw):
    from anomalens.viz import render_overlay

    rng = np.random.default_rng(0)
    img = rng.uniform(0, 1, (*hw, 3))
    canvas = render_overlay(img, rng.uniform(0, 1, hw), 0.0, 1.0, score=0.7, threshold=0.5)
    header, ph, pw = _layout(canvas.shape, hw)
    assert header > 0 and abs(ph / pw - hw[0] / hw[1]) < 0.01  # same aspect as the original
    if ph % hw[0] == 0:  # enlarged by a whole factor: the left panel is the original, pixel for pixel
        k = ph // hw[0]
        expect = (img * 255 + 0.5).astype(np.uint8).repeat(k, 0).repeat(k, 1)
        assert np.array_equal(canvas[header:, :pw], expect)
    assert canvas.shape[1] > 2 * pw  # image | overlay | colour bar


def test_overlay_verdict_and_colour_bar_are_drawn():
    from anomalens.viz import render_overlay, verdict_text

    img, amap = np.full((50, 80, 3), 0.5), np.linspace(0, 1, 80)[None].repeat(50, 0)
    anomalous = render_overlay(img, amap, 0.0, 1.0, score=0.7, threshold=0.5)
    normal = render_overlay(img, amap, 0.0, 1.0, score=0.7, threshold=0.9)
    unset = render_overlay(img, amap, 0.0, 1.0, score=0.7)
    header, ph, pw = _layout(anomalous.shape, (50, 80))
    assert not np.array_equal(anomalous[:header], normal[:header]) and not np.array_equal(normal[:header], unset[:header])
    assert np.array_equal(anomalous[header:, : 2 * pw], normal[header:, : 2 * pw])  # only the verdict differs
    r, g = anomalous[header // 2, 2 * pw].astype(int)[:2], normal[header // 2, 2 * pw].astype(int)[:2]
    assert r[0] > r[1] and g[1] > g[0]  # red header when anomalous, green when normal
    assert verdict_text(0.7, 0.5)[1] is True and verdict_text(0.5, 0.5)[1] is False and verdict_text(0.5, None)[1] is None
    bar = anomalous[header + 1 : -1, 2 * pw + 8 + 2].astype(int)  # the colour bar: red (high) at the top, blue at the bottom
    assert bar[0, 0] > bar[0, 2] and bar[-1, 2] > bar[-1, 0]


def test_overlay_greys_what_the_model_did_not_see():
    img, amap = np.full((20, 40, 3), 0.8), np.full((20, 40), 1.0)
    amap[:, :10] = np.nan
    out = overlay(img, amap, 0.0, 1.0)
    assert np.allclose(out[:, :10], out[:, :10, :1])  # grey: no heat colour where the map is NaN
    assert not np.allclose(out[:, 20], out[:, 20, :1])


def test_random_init_overlays_say_so(tmp_path, monkeypatch):
    from anomalens.cli.common import write_overlays
    from anomalens.detector import Prediction
    from anomalens.data import ImageTransform
    from anomalens.viz import render_overlay
    import anomalens.viz
    from PIL import Image

    img, amap = np.full((50, 80, 3), 0.5), np.zeros((50, 80))
    assert not np.array_equal(render_overlay(img, amap, 0, 1, score=0.5, note="random-init backbone"),
                              render_overlay(img, amap, 0, 1, score=0.5))
    Image.fromarray(np.zeros((50, 80, 3), np.uint8)).save(tmp_path / "a.png")
    seen = []
    monkeypatch.setattr(anomalens.viz, "save_overlay", lambda *a, **kw: seen.append(a[-1]))
    for flag in (True, False):
        pred = Prediction(np.array([0.5]), np.zeros((1, 8, 8), np.float32), None, [str(tmp_path / "a.png")],
                          info={"random_init": flag}, original_sizes=[(50, 80)], geometry=ImageTransform(8, None))
        write_overlays(pred, None, tmp_path / "o")
    assert "random-init backbone" in seen[0] and "random-init" not in seen[1]
    from anomalens.viz.files import PER_IMAGE_NOTE

    assert all(PER_IMAGE_NOTE in note for note in seen)  # no calibrated scale: coloured per image, and said so


# ---- issue 19: one overlay per image, never a collision; colours that mean the same thing on every image
def test_overlay_names_never_collide_across_folders(tmp_path):
    from anomalens.viz import overlay_name, overlay_root

    a, b = tmp_path / "hazelnut" / "test", tmp_path / "transistor" / "test"
    paths = [str(d / "good" / "000.png") for d in (a, b)] + [str(a / "good" / "000.jpg"), str(tmp_path / "x__y" / "z.png"),
                                                           str(tmp_path / "x" / "y__z.png")]
    for d in (a, b, tmp_path / "x__y", tmp_path / "x"):
        d.mkdir(parents=True)
    root = overlay_root([a, b, tmp_path / "x__y", tmp_path / "x"])
    names = [overlay_name(p, root) for p in paths]
    assert len(set(names)) == len(paths) and all(n.endswith(".png") and "/" not in n for n in names)
    assert overlay_name(paths[0], overlay_root([a])) == "good__000.png"  # one folder: as short as before


def test_predict_two_folders_one_overlay_per_row(tmp_path, synthetic_root):
    """Two folders with the same file names (good/000.png ...): one overlay per image, named in each row."""
    import csv

    from typer.testing import CliRunner

    from anomalens.cli import app
    from conftest import tiny_patchcore

    det = tiny_patchcore().fit(str(synthetic_root / "weave" / "train" / "good"))
    model = det.save(tmp_path / "m")
    dirs = [str(synthetic_root / c / "test") for c in ("weave", "disc")]
    r = CliRunner().invoke(app, ["predict", str(model), *dirs, "-o", str(tmp_path / "o"), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(open(tmp_path / "o" / "predictions.csv", newline="")))
    drawn = sorted((tmp_path / "o" / "overlays").glob("*.png"))
    assert len(drawn) == len(rows) == len({r["path"] for r in rows})
    assert sorted(r["overlay"] for r in rows) == sorted(str(p.relative_to(tmp_path).as_posix()) for p in drawn) or \
        sorted(os.path.abspath(r["overlay"]) for r in rows) == sorted(str(p) for p in drawn)


def _same_image_in_two_batches(tmp_path, synthetic_root, det):
    from anomalens.viz import write_overlays

    test = synthetic_root / "weave" / "test"
    target = sorted((test / "good").glob("*.png"))[0]
    others = [sorted((test / "hole").glob("*.png"))[0], sorted((test / "good").glob("*.png"))[1]]
    scale = (getattr(det, "calibration_", None) or {}).get("map_scale")
    out = []
    for k, other in enumerate(others):
        pred = det.predict([str(target), str(other)])
        files = write_overlays(pred, None, tmp_path / f"o{k}", root=test, scale=scale)
        out.append(files[0].read_bytes())
    return out


def test_same_image_same_overlay_whatever_the_batch(tmp_path, synthetic_root):
    from anomalens.data import MVTecAD
    from conftest import tiny_patchcore

    det = tiny_patchcore().fit(MVTecAD(synthetic_root, "weave", "train"))
    a, b = _same_image_in_two_batches(tmp_path / "uncal", synthetic_root, det)  # uncalibrated: per-image scale
    assert a == b
    det.calibrate(str(synthetic_root / "weave" / "test" / "good"), fpr=0.25)
    scale = det.calibration_["map_scale"]
    assert scale["low"] < scale["threshold"] == det.threshold_ < scale["high"]
    a, b = _same_image_in_two_batches(tmp_path / "cal", synthetic_root, det)  # calibrated: the model's fixed scale
    assert a == b


def test_fixed_scale_marks_the_threshold_and_per_image_scale_says_so():
    from anomalens.viz import render_overlay

    img, amap = np.full((50, 80, 3), 0.5), np.linspace(0, 1, 50 * 80).reshape(50, 80)
    plain = render_overlay(img, amap, 0, 1, score=0.5, threshold=0.6)
    marked = render_overlay(img, amap, 0, 1, score=0.5, threshold=0.6, mark=0.6)
    assert not np.array_equal(plain, marked)
