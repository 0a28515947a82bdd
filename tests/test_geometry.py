"""The shared geometry layer (anomalens.data.geometry): paper / whole / aspect / tiles for every method."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import anomalens
from anomalens.data import ImageTransform
from anomalens.data.geometry import Tiler, auto_geometry, build_frame, tile_offsets
from anomalens.errors import SettingError


@pytest.mark.parametrize("H,W,tile,overlap", [(100, 300, 64, 16), (64, 64, 64, 16), (65, 200, 64, 0), (500, 1265, 256, 64),
                                              (40, 90, 64, 16)])
def test_tiles_cover_every_pixel_with_the_stated_overlap(H, W, tile, overlap):
    t = Tiler(tile, overlap)
    boxes = t.boxes(H, W)
    cover = np.zeros((H, W), int)
    for top, left, s in boxes:
        assert s == min(tile, H, W) and top + s <= H and left + s <= W
        cover[top:top + s, left:left + s] += 1
    assert cover.min() >= 1
    for axis in (0, 1):
        starts = sorted({b[axis] for b in boxes})
        s = boxes[0][2]
        assert all(b - a <= s - min(overlap, s - 1) for a, b in zip(starts, starts[1:]))  # neighbours share >= overlap


@pytest.mark.parametrize("blend", ["smooth", "uniform"])
def test_stitching_a_map_that_is_the_view_itself_gives_the_frame_back(blend):
    """Two routes to one answer: a 'model' whose map is its own input channel 0 must stitch back to the frame's
    channel 0 exactly (any blend weights), and a max-reduced score to the frame's maximum."""
    g = torch.Generator().manual_seed(0)
    frames = torch.rand(2, 3, 90, 211, generator=g)
    tiler = Tiler(48, 12, blend=blend, reduce="max")

    def views_out(v):
        return v[:, 0].flatten(1).amax(1).double().numpy(), v[:, 0].numpy()

    scores, maps = tiler.score(frames, views_out, batch_size=5)
    np.testing.assert_allclose(maps, frames[:, 0].numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(scores, frames[:, 0].flatten(1).amax(1).numpy(), rtol=1e-7)


def test_smooth_blend_ramps_only_between_tiles_and_has_no_seam():
    tiler = Tiler(64, 32)
    H, W = 64, 160
    boxes = tiler.boxes(H, W)
    first = tiler.weight(boxes[0], H, W)
    assert torch.all(first[:, 0] == 1) and first[0, -1] < 0.05  # full weight at the frame edge, ramp into the overlap
    # tiles that each say a different constant: the stitched map moves between them without a step > the ramp's slope
    levels = {b: float(i) for i, b in enumerate(boxes)}

    def views_out(v):
        n = v.shape[0]
        return np.zeros(n), np.stack([np.full((64, 64), levels[b], np.float32) for b in boxes[:n]])

    _, m = tiler.score(torch.zeros(1, 3, H, W), views_out, batch_size=len(boxes))
    steps = np.abs(np.diff(m[0, 0]))
    assert steps.max() <= 1.0 / 32 + 1e-5, steps.max()  # uniform averaging would jump by 0.5 at each tile edge


def test_tile_offsets_include_both_edges():
    assert tile_offsets(100, 100, 80) == [0]
    offs = tile_offsets(1265, 256, 192)
    assert offs[0] == 0 and offs[-1] == 1265 - 256 and all(b - a <= 192 for a, b in zip(offs, offs[1:]))


def test_frames_of_each_geometry():
    paper = ImageTransform(256, 224)
    assert build_frame("paper", paper, None, 256, fixed_input=False).transform == paper
    whole = build_frame("whole", paper, None, 256, fixed_input=False)
    assert whole.transform.resize == (256, 256) and whole.transform.crop is None and whole.tiler is None
    aspect_cnn = build_frame("aspect", paper, None, 256, fixed_input=False)
    assert aspect_cnn.transform.resize == 256 and aspect_cnn.tiler is None  # a CNN takes the frame as it is
    aspect_vit = build_frame("aspect", paper, 240, 240, fixed_input=True)
    assert aspect_vit.tiler is not None and aspect_vit.tiler.input_size == 240
    tiles = build_frame("tiles", paper, 240, 240, fixed_input=True, tile=512, overlap=64, scale=0.5)
    assert tiles.transform.resized_size((3000, 4000)) == (1500, 2000)
    assert tiles.tiler.tile == 512 and tiles.tiler.overlap == 64 and tiles.tiler.input_size == 240
    with pytest.raises(SettingError, match="overlap"):
        build_frame("tiles", paper, None, 256, fixed_input=False, tile=64, overlap=64)


def test_auto_rule():
    assert auto_geometry("mvtec", (4000, 3000), 256) == "paper"
    assert auto_geometry("folder", (300, 300), 256) == "aspect"
    assert auto_geometry("folder", (500, 1265), 256) == "tiles"
    assert auto_geometry("folder", (3000, 4000), 256) == "tiles"


def test_scale_transform_maps_back_to_the_original_size():
    t = ImageTransform(None, None, scale=0.5)
    img = torch.rand(3, 81, 120)
    assert tuple(t.image(img).shape) == (3, 40, 60)
    back = t.map_to_original(np.ones((40, 60), np.float32), (81, 120))
    assert back.shape == (81, 120) and np.isfinite(back).all()
    assert ImageTransform(**t.to_dict()).to_dict() == t.to_dict() and "scale" not in ImageTransform(256, 224).to_dict()


def test_musc_refuses_tiles_in_one_line():
    with pytest.raises(SettingError, match="mutual scoring"):
        anomalens.create("musc", geometry="tiles", weights=None)


def _texture(rng, h, w):
    """A smooth random texture in [0.3, 0.7] (upsampled noise), as an RGB uint8 array."""
    small = rng.random((h // 16 + 2, w // 16 + 2, 3)).astype(np.float32)
    big = torch.nn.functional.interpolate(torch.from_numpy(small).permute(2, 0, 1)[None], size=(h, w), mode="bilinear",
                                          align_corners=False)[0].permute(1, 2, 0).numpy()
    return ((0.3 + 0.4 * big) * 255).astype(np.uint8)


@pytest.mark.slow
def test_small_corner_defect_on_a_large_image_is_found_by_tiles_and_missed_by_the_squash(tmp_path):
    """A 4000 × 3000 image with a 10-px defect in a corner: the default geometry (auto → tiles at native resolution)
    scores it above every normal image and puts the map's maximum on it; the whole image squashed to 256² does not."""
    rng = np.random.default_rng(0)
    H, W = 3000, 4000
    for i in range(2):  # the normals to fit on: smaller shots of the same surface (already past 1.5 × 256: tiles)
        Image.fromarray(_texture(rng, 768, 1024)).save(tmp_path / f"good{i}.png")
    tests = []
    for i in range(2):
        p = tmp_path / "test" / f"ok{i}.png"
        p.parent.mkdir(exist_ok=True)
        Image.fromarray(_texture(rng, H, W)).save(p)
        tests.append(str(p))
    bad = np.asarray(Image.open(tests[0])).copy()  # the first normal test image, plus the defect
    # 10 × 10 px in the bottom-right corner: a fine checkerboard around the local mean (a scratch-like texture), which
    # averages away to the surface's own grey when the image is squashed
    patch = bad[H - 20:H - 10, W - 20:W - 10].astype(np.float32)
    checker = (np.indices((10, 10)).sum(0) % 2 * 2 - 1)[..., None] * 90.0
    bad[H - 20:H - 10, W - 20:W - 10] = np.clip(patch.mean((0, 1)) + checker, 0, 255).astype(np.uint8)
    Image.fromarray(bad).save(tmp_path / "test" / "bad.png")
    tests.append(str(tmp_path / "test" / "bad.png"))
    common = dict(backbone="resnet18", weights=None, target_dim=64, pretrain_dim=64, coreset_ratio=0.01, device="cpu")
    good = [str(tmp_path / f"good{i}.png") for i in range(2)]

    tiled = anomalens.create("patchcore", **common).fit(good)
    assert tiled.geometry_ == "tiles"
    pred = tiled.predict(tests)
    assert pred.image_scores[-1] > pred.image_scores[:-1].max(), pred.image_scores
    full = pred.map_at_original_size(2)
    assert full.shape == (H, W)
    y, x = np.unravel_index(np.nanargmax(full), full.shape)
    assert y > H - 60 and x > W - 60, (y, x)

    squashed = anomalens.create("patchcore", geometry="whole", **common).fit(good)
    s = squashed.predict(tests).image_scores
    # 10 px of 4000 become 0.6 px of the surface's mean grey: the score of the image it was added to hardly moves
    assert abs(s[-1] - s[0]) < 0.05 * (s[:-1].max() - s[:-1].min()), s


def test_chunked_coreset_is_exact_per_chunk_and_covers_like_the_exact_one():
    """Two routes: one chunk ≥ N is the exact greedy selection; several chunks are each the exact greedy selection of
    their own rows (a literal loop), and the union covers the data nearly as well as the exact coreset of equal size."""
    from anomalens.ops.coreset import chunked_select, greedy_select

    g = torch.Generator().manual_seed(0)
    centres = torch.randn(40, 16, generator=g) * 4
    x = centres[torch.randint(0, 40, (6000,), generator=g)] + torch.randn(6000, 16, generator=g)
    exact = greedy_select(x, 600, seed=3, progress=False)
    assert torch.equal(chunked_select(x, 0.1, None, seed=3), exact)
    assert torch.equal(chunked_select(x, 0.1, 10_000, seed=3), exact)
    chunked = chunked_select(x, 0.1, 2000, seed=3)
    ref = torch.cat([greedy_select(x[lo:lo + 2000], 200, seed=3 + i, progress=False) + lo for i, lo in enumerate(range(0, 6000, 2000))])
    assert torch.equal(chunked, ref)
    radius = lambda idx: torch.cdist(x, x[idx]).min(1).values.max().item()  # noqa: E731
    assert radius(chunked) <= 1.5 * radius(exact), (radius(chunked), radius(exact))
    limited = chunked_select(x, 0.1, 2000, seed=3, limit=150)
    assert len(limited) == 150 and len(set(limited.tolist())) == 150


def _texture_files(folder, sizes, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (h, w) in enumerate(sizes):
        p = folder / f"{i}.png"
        Image.fromarray(_texture(rng, h, w)).save(p)
        paths.append(str(p))
    return paths


@pytest.fixture(scope="module")
def tiled_model(tmp_path_factory):
    """A random-init PatchCore in tiles geometry (64-px tiles, 16-px overlap) fitted on 3 images of 100 × 150."""
    from conftest import tiny_patchcore

    root = tmp_path_factory.mktemp("tiles")
    fit = _texture_files(root / "good", [(100, 150)] * 3)
    test = _texture_files(root / "test", [(100, 150)] * 3, seed=1)
    model = tiny_patchcore(geometry="tiles", tile=64, overlap=16, resize=64, crop=None, coreset_ratio=0.2).fit(fit)
    return model, test, root


def test_tiled_prediction_survives_save_and_load_and_streams_the_same(tiled_model, tmp_path):
    """The resolved geometry travels with the model: a loaded model, the streaming runner (the route of `anomalens
    predict`, serve and Ray) and predict() give the same scores, maps at the original size."""
    from anomalens.deploy.stream import predict_stream

    model, test, _ = tiled_model
    ref = model.predict(test)
    assert ref.anomaly_maps.shape == (3, 100, 150) and ref.map_at_original_size(0).shape == (100, 150)
    model.save(tmp_path / "m")
    loaded = anomalens.load(tmp_path / "m")
    assert loaded.geometry_ == "tiles" and loaded.frame.tiler == model.frame.tiler
    np.testing.assert_allclose(loaded.predict(test).image_scores, ref.image_scores, rtol=1e-6)
    import csv

    predict_stream(loaded, test, tmp_path / "out")
    rows = {r["path"]: float(r["score"]) for r in csv.DictReader(open(tmp_path / "out" / "predictions.csv", newline=""))}
    np.testing.assert_allclose([rows[p] for p in test], ref.image_scores, rtol=1e-6)


def test_tiled_image_score_is_the_largest_patch_score_of_any_tile(tiled_model):
    """PatchCore's rule over tiles: the image score is the max over tiles of each tile's own max patch score."""
    model, test, _ = tiled_model
    ds = anomalens.data.as_dataset(test[:1], model.transform)
    frame = ds[0].image[None]
    tiler = model.frame.tiler
    per_tile = [model._predict_batch(tiler.views(frame, [b]))[0][0] for b in tiler.boxes(*frame.shape[-2:])]
    assert len(per_tile) == 6  # 100 × 150 in 64-px tiles at stride 48: 2 rows × 3 columns
    assert model.predict(test[:1]).image_scores[0] == pytest.approx(max(per_tile), rel=1e-6)


def test_tiled_model_exports_with_its_geometry(tiled_model, tmp_path):
    pytest.importorskip("onnxruntime")
    from anomalens.deploy.export import OnnxModel, export_onnx

    model, test, _ = tiled_model
    export_onnx(model, tmp_path / "m.onnx", (100, 150))
    x = torch.stack([s.image for s in anomalens.data.as_dataset(test, model.transform)])
    s, m = OnnxModel(tmp_path / "m.onnx").run(x)
    ref = model.predict(test)
    np.testing.assert_allclose(s, ref.image_scores, rtol=1e-4)
    np.testing.assert_allclose(m, ref.anomaly_maps, rtol=0, atol=1e-4 * np.abs(ref.anomaly_maps).max())


def test_aspect_geometry_keeps_the_aspect_and_batches_equal_sizes(tmp_path):
    from conftest import tiny_patchcore

    fit = _texture_files(tmp_path / "good", [(60, 150)] * 3)
    model = tiny_patchcore(geometry="aspect", resize=48, crop=None).fit(fit)
    assert model.transform.resize == 48 and model.transform.crop is None
    pred = model.predict(_texture_files(tmp_path / "test", [(60, 150), (90, 90), (60, 150)], seed=2))
    assert pred.map_at_original_size(1).shape == (90, 90) and pred.map_at_original_size(0).shape == (60, 150)
    alone = model.predict([pred.paths[1]])
    assert alone.image_scores[0] == pytest.approx(pred.image_scores[1], rel=1e-6)
