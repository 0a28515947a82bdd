"""Data layer: every bad-input case gives a clear DataError naming the file; odd image modes convert."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from anomalens.data import FolderDataset, ImagePaths, ImageTransform, MVTecAD, VisA, as_dataset, load_image, load_mask
from anomalens.data.synthetic import make_synthetic_dataset, make_synthetic_image
from anomalens.errors import DataError


def _png(path, arr, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode=mode).save(path)
    return path


def _mvtec(tmp_path, n=2, size=32):
    root = tmp_path / "mv"
    for i in range(n):
        _png(root / "cat" / "train" / "good" / f"{i:03d}.png", np.full((size, size, 3), 100, np.uint8))
        _png(root / "cat" / "test" / "good" / f"{i:03d}.png", np.full((size, size, 3), 100, np.uint8))
        _png(root / "cat" / "test" / "crack" / f"{i:03d}.png", np.full((size, size, 3), 50, np.uint8))
        m = np.zeros((size, size), np.uint8)
        m[4:9, 4:9] = 255
        _png(root / "cat" / "ground_truth" / "crack" / f"{i:03d}_mask.png", m)
    return root


def test_mvtec_reads_layout_and_labels(tmp_path):
    root = _mvtec(tmp_path)
    ds = MVTecAD(root, "cat", "test")
    assert len(ds) == 4
    assert sorted(ds.labels.tolist()) == [0, 0, 1, 1]
    crack = [i for i, r in enumerate(ds.records) if r.defect_type == "crack"]
    good = [i for i, r in enumerate(ds.records) if r.defect_type == "good"]
    s = ds[crack[0]]
    assert s.label == 1
    assert s.mask is not None and s.mask.dtype == torch.bool and s.mask.sum() == 25
    assert ds[good[0]].mask is not None and not ds[good[0]].mask.any()  # normal test image: all-zero mask
    assert MVTecAD.categories(root) == ["cat"]


def test_missing_root_names_path(tmp_path):
    with pytest.raises(DataError, match=str(tmp_path / "nope")):
        MVTecAD(tmp_path / "nope", "cat")


def test_missing_category_names_it(tmp_path):
    root = _mvtec(tmp_path)
    with pytest.raises(DataError, match="bottle"):
        MVTecAD(root, "bottle")


def test_empty_folder_is_an_error(tmp_path):
    root = _mvtec(tmp_path)
    for f in (root / "cat" / "train" / "good").iterdir():
        f.unlink()
    with pytest.raises(DataError, match="no images found"):
        MVTecAD(root, "cat", "train")
    with pytest.raises(DataError, match="no images found"):
        ImagePaths(root / "cat" / "train" / "good")
    with pytest.raises(DataError, match="no images found in normal image folder"):
        FolderDataset(root / "cat" / "train" / "good")


def test_corrupt_image_names_file(tmp_path):
    root = _mvtec(tmp_path)
    bad = root / "cat" / "test" / "good" / "000.png"
    bad.write_bytes(b"not an image at all")
    ds = MVTecAD(root, "cat", "test")
    idx = ds.paths.index(str(bad))
    with pytest.raises(DataError, match="000.png"):
        ds[idx]


def test_truncated_image_names_file(tmp_path):
    p = _png(tmp_path / "x.png", np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="x.png"):
        load_image(p)


def test_truncated_jpeg_names_file(tmp_path):
    p = tmp_path / "t.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(p, quality=90)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="t.jpg"):
        load_image(p)


def test_mask_without_image_mvtec(tmp_path):
    root = _mvtec(tmp_path)
    _png(root / "cat" / "ground_truth" / "crack" / "007_mask.png", np.zeros((32, 32), np.uint8))
    with pytest.raises(DataError, match="007_mask.png"):
        MVTecAD(root, "cat", "test")


def test_mask_without_image_folder(tmp_path):
    _png(tmp_path / "bad" / "a.png", np.zeros((8, 8, 3), np.uint8))
    _png(tmp_path / "masks" / "a_mask.png", np.zeros((8, 8), np.uint8))
    _png(tmp_path / "masks" / "zzz_mask.png", np.zeros((8, 8), np.uint8))
    with pytest.raises(DataError, match="zzz_mask.png"):
        FolderDataset(abnormal_dir=tmp_path / "bad", mask_dir=tmp_path / "masks")


def test_image_mask_size_mismatch_names_both(tmp_path):
    root = _mvtec(tmp_path)
    _png(root / "cat" / "ground_truth" / "crack" / "000_mask.png", np.zeros((16, 20), np.uint8))
    ds = MVTecAD(root, "cat", "test")
    idx = [i for i, r in enumerate(ds.records) if r.defect_type == "crack"][0]
    with pytest.raises(DataError, match=r"000_mask.png.*20x16.*000.png"):
        ds[idx]


@pytest.mark.parametrize(
    "mode,arr",
    [
        ("L", np.arange(64, dtype=np.uint8).reshape(8, 8)),
        ("RGBA", np.dstack([np.full((8, 8, 3), 200, np.uint8), np.full((8, 8), 255, np.uint8)])),
        ("I;16", (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000)),
        ("1", None),
        ("P", None),
    ],
)
def test_odd_modes_convert_to_rgb(tmp_path, mode, arr):
    p = tmp_path / f"img_{mode.replace(';', '')}.png"
    if mode == "1":
        Image.fromarray(np.eye(8, dtype=bool)).save(p)
    elif mode == "P":
        Image.fromarray(np.full((8, 8, 3), 90, np.uint8)).convert("P").save(p)
    else:
        Image.fromarray(arr, mode=mode if mode != "I;16" else None).save(p)
    img = load_image(p)
    assert img.mode == "RGB" and img.size == (8, 8)
    a = np.asarray(img)
    if mode == "I;16":  # 16-bit scaled by its range, not clipped to 255
        assert a.max() > 200 and a[0, 0, 0] == 0
    if mode == "RGBA":
        assert (a == 200).all()


def test_masks_binarised_any_encoding(tmp_path):
    m01 = np.zeros((8, 8), np.uint8)
    m01[2:4, 2:4] = 1  # KolektorSDD style 0/1
    p = _png(tmp_path / "m.png", m01)
    assert load_mask(p).sum() == 4
    Image.fromarray(m01.astype(bool)).save(tmp_path / "b.png")  # 1-bit
    assert load_mask(tmp_path / "b.png").sum() == 4


def test_transform_geometry_and_mask_binary():
    t = ImageTransform(resize=256, crop=224)
    img = Image.fromarray(np.zeros((300, 400, 3), np.uint8))
    x = t.image(img)
    assert tuple(x.shape) == (3, 224, 224)
    mask = np.zeros((300, 400), bool)
    mask[140:160, 190:210] = True
    m = t.mask(mask)
    assert m.shape == (224, 224) and m.dtype == torch.bool and m.any()
    # same geometry: the mask centre stays at the image centre
    ys, xs = np.nonzero(m.numpy())
    assert abs(ys.mean() - 111.5) < 3 and abs(xs.mean() - 111.5) < 3


def test_squash_resize_keeps_no_aspect():
    t = ImageTransform(resize=(48, 48), crop=None)
    assert tuple(t.image(Image.fromarray(np.zeros((30, 90, 3), np.uint8))).shape) == (3, 48, 48)


def test_denormalize_inverts_normalisation():
    t = ImageTransform(resize=None, crop=None)
    x = torch.rand(3, 10, 12)
    assert torch.allclose(t.denormalize(t.image(x)), x, atol=1e-6)


def test_visa_layout(tmp_path):
    root = tmp_path / "visa"
    rows = ["object,split,label,image,mask"]
    for i in range(3):
        _png(root / "pcb1" / "Data" / "Images" / "Normal" / f"{i:04d}.JPG", np.full((20, 30, 3), 80, np.uint8))
        rows.append(f"pcb1,train,normal,pcb1/Data/Images/Normal/{i:04d}.JPG,")
    _png(root / "pcb1" / "Data" / "Images" / "Anomaly" / "000.JPG", np.full((20, 30, 3), 10, np.uint8))
    m = np.zeros((20, 30), np.uint8)
    m[3:6, 3:6] = 2  # VisA masks carry values > 1
    _png(root / "pcb1" / "Data" / "Masks" / "Anomaly" / "000.png", m)
    rows.append("pcb1,test,anomaly,pcb1/Data/Images/Anomaly/000.JPG,pcb1/Data/Masks/Anomaly/000.png")
    (root / "split_csv").mkdir(parents=True)
    (root / "split_csv" / "1cls.csv").write_text("\n".join(rows) + "\n")
    assert VisA.categories(root) == ["pcb1"]
    assert len(VisA(root, "pcb1", "train")) == 3
    test = VisA(root, "pcb1", "test")
    assert test.labels.tolist() == [1] and test[0].mask.sum() == 9
    (root / "pcb1" / "Data" / "Masks" / "Anomaly" / "000.png").unlink()
    with pytest.raises(DataError, match="000.png"):
        VisA(root, "pcb1", "test")
    with pytest.raises(DataError, match="1cls.csv"):
        VisA(tmp_path, "pcb1")


def test_image_paths_glob_list_and_tensor(tmp_path):
    for i in range(3):
        _png(tmp_path / "imgs" / f"{i}.png", np.zeros((8, 8, 3), np.uint8))
    assert len(ImagePaths(str(tmp_path / "imgs" / "*.png"))) == 3
    assert len(as_dataset([tmp_path / "imgs" / "0.png", tmp_path / "imgs" / "1.png"])) == 2
    with pytest.raises(DataError, match="no images match"):
        ImagePaths(str(tmp_path / "imgs" / "*.jpg"))
    with pytest.raises(DataError, match="path not found"):
        ImagePaths(tmp_path / "missing.png")
    ds = as_dataset(torch.rand(2, 3, 16, 16))
    assert len(ds) == 2 and ds[0].image.shape == (3, 16, 16)
    with pytest.raises(DataError, match="shape"):
        as_dataset(torch.rand(2, 5, 16, 16))


def test_folder_dataset_matches_masks_by_stem(tmp_path):
    _png(tmp_path / "good" / "g.png", np.zeros((8, 8, 3), np.uint8))
    _png(tmp_path / "bad" / "a.png", np.zeros((8, 8, 3), np.uint8))
    m = np.zeros((8, 8), np.uint8)
    m[1, 1] = 255
    _png(tmp_path / "masks" / "a_mask.png", m)
    ds = FolderDataset(tmp_path / "good", tmp_path / "bad", tmp_path / "masks")
    assert ds.labels.tolist() == [0, 1] and ds.has_masks and ds[1].mask.sum() == 1


def test_synthetic_is_deterministic_and_masks_exact(tmp_path):
    a, ma = make_synthetic_image("disc", 3, "test", 1, "hole", size=64)
    b, mb = make_synthetic_image("disc", 3, "test", 1, "hole", size=64)
    c, _ = make_synthetic_image("disc", 4, "test", 1, "hole", size=64)
    assert np.array_equal(a, b) and np.array_equal(ma, mb) and not np.array_equal(a, c)
    normal, mn = make_synthetic_image("disc", 3, "test", 1, None, size=64)
    assert not mn.any() and ma.any()
    r1 = make_synthetic_dataset(tmp_path / "a", categories=["weave"], n_train=2, n_test_good=1, n_test_per_defect=1, size=48)
    r2 = make_synthetic_dataset(tmp_path / "b", categories=["weave"], n_train=2, n_test_good=1, n_test_per_defect=1, size=48)
    files = sorted(p.relative_to(r1) for p in r1.rglob("*.png"))
    assert files and all((r1 / f).read_bytes() == (r2 / f).read_bytes() for f in files)
    ds = MVTecAD(r1, "weave", "test")
    assert ds.has_masks and (ds.labels == 1).sum() == 5


def test_few_shot_sample_is_seeded_subset(tmp_path):
    root = _mvtec(tmp_path, n=6)
    ds = MVTecAD(root, "cat", "train")
    a, b, c = ds.sample(3, seed=1), ds.sample(3, seed=1), ds.sample(3, seed=2)
    assert a.paths == b.paths and len(a) == 3 and set(a.paths) <= set(ds.paths)
    assert any(ds.sample(3, seed=s).paths != a.paths for s in range(2, 6))
    assert c.paths == sorted(c.paths)
    with pytest.raises(DataError, match="cannot draw 7"):
        ds.sample(7)


# ---- issue 10: folders as they come ------------------------------------------------------------------------------
@pytest.mark.parametrize("hw", [(1, 1), (5, 300)])
def test_tiny_image_is_a_clear_error_naming_the_file(tmp_path, hw):
    p = _png(tmp_path / "dot.png", np.zeros((*hw, 3), np.uint8))
    with pytest.raises(DataError, match=r"too small.*dot.png"):
        load_image(p)
    with pytest.raises(DataError, match="dot.png"):
        ImagePaths(p)[0]


def test_batches_of_mixed_sizes_keep_order_and_split_where_size_changes(tmp_path):
    from anomalens.data import iter_batches

    sizes = [(32, 48), (32, 48), (40, 40), (32, 48), (32, 48), (32, 48)]
    paths = [_png(tmp_path / f"{i}.png", np.full((*hw, 3), i * 10, np.uint8)) for i, hw in enumerate(sizes)]
    t = ImageTransform(resize=None, crop=None, mean=(0, 0, 0), std=(1, 1, 1))
    batches = list(iter_batches([str(p) for p in paths], t, batch_size=2))
    assert [b[0].shape[0] for b in batches] == [2, 1, 2, 1]
    flat = [s for b in batches for s in b[2]]
    assert [s.path for s in flat] == [str(p) for p in paths] and [s.size for s in flat] == sizes
    assert all(tuple(b[0].shape[-2:]) == b[2][0].size for b in batches)


def test_map_to_original_inverts_resize_and_crop():
    t = ImageTransform(resize=8, crop=None)
    amap = np.arange(64, dtype=np.float32).reshape(8, 8)
    assert np.array_equal(t.map_to_original(amap, (8, 8)), amap)  # identity geometry: the map itself
    assert t.map_to_original(amap, (16, 32)).shape == (16, 32)
    crop = ImageTransform(resize=10, crop=8)  # 20x20 -> 10x10 -> centre 8x8 at (1, 1): preimage [2, 18)
    full = crop.map_to_original(np.ones((8, 8), np.float32), (20, 20))
    seen = ~np.isnan(full)
    assert seen[2:18, 2:18].all() and seen.sum() == 16 * 16
