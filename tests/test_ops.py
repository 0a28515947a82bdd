"""Shared numerics: coreset = brute-force greedy; faiss = torch = cdist kNN; pooling = the official pipeline; blur = scipy."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage as ndi
import torch
import torch.nn.functional as F

from anomalens.ops import (
    PatchAggregator,
    adaptive_pool_matrix,
    aggregate_anomalib,
    aggregate_reference,
    coreset_size,
    gaussian_blur,
    greedy_coreset,
    knn_faiss,
    knn_torch,
    random_projection,
)


def greedy_bruteforce(x: np.ndarray, l: int, seed: int, start: str = "mean10") -> list[int]:
    """Plain greedy k-center, written the slow, obvious way (float64, direct Euclidean distances)."""
    N = len(x)
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    if start == "mean10":
        starts = rng.choice(N, size=min(10, N), replace=False)
        delta = np.array([np.mean([np.linalg.norm(x[i] - x[s]) for s in starts]) for i in range(N)])
    else:
        i0 = int(rng.integers(N))
        chosen.append(i0)
        delta = np.array([np.linalg.norm(x[i] - x[i0]) for i in range(N)])
        delta[i0] = -np.inf
    while len(chosen) < l:
        j = int(np.argmax(delta))
        chosen.append(j)
        for i in range(N):
            delta[i] = min(delta[i], np.linalg.norm(x[i] - x[j]))
        delta[j] = -np.inf
    return chosen


@pytest.mark.parametrize("prune", [False, True])
@pytest.mark.parametrize("start", ["mean10", "random_point"])
@pytest.mark.parametrize("seed", [0, 1])
def test_coreset_matches_bruteforce_greedy(start, seed, prune):
    feats = torch.randn(300, 200, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    fast = greedy_coreset(feats, ratio=0.1, proj_dim=16, seed=seed, start=start, dtype=torch.float64, progress=False, prune=prune)
    projected = (feats @ random_projection(200, 16, seed).double()).numpy()
    ref = greedy_bruteforce(projected, coreset_size(300, 0.1), seed, start)
    assert fast.tolist() == ref  # index by index


@pytest.mark.parametrize("start", ["mean10", "random_point"])
def test_pruned_coreset_equals_plain_on_clustered_data(start):
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(20, 32, generator=g) * 6
    x = centres[torch.randint(0, 20, (4000,), generator=g)] + torch.randn(4000, 32, generator=g)
    plain = greedy_coreset(x, n=400, seed=2, start=start, progress=False)
    pruned = greedy_coreset(x, n=400, seed=2, start=start, progress=False, prune=True)
    assert torch.equal(plain, pruned)


def test_coreset_float32_matches_bruteforce_on_separated_data():
    g = torch.Generator().manual_seed(3)
    feats = torch.randn(400, 32, generator=g) * 10
    fast = greedy_coreset(feats, ratio=0.05, proj_dim=128, seed=0, progress=False)  # d <= d*: no projection
    assert fast.tolist() == greedy_bruteforce(feats.double().numpy(), 20, 0)


def test_coreset_size_subset_unique_prefix_and_ratio_one():
    feats = torch.randn(500, 64, generator=torch.Generator().manual_seed(0))
    a = greedy_coreset(feats, ratio=0.02, seed=5, progress=False)
    b = greedy_coreset(feats, ratio=0.1, seed=5, progress=False)
    assert len(a) == 10 and len(b) == 50
    assert len(set(b.tolist())) == 50 and b.min() >= 0 and b.max() < 500
    assert b[:10].tolist() == a.tolist()  # prefix property
    assert greedy_coreset(feats, ratio=1.0).tolist() == list(range(500))
    assert coreset_size(5, 0.01) == 1
    with pytest.raises(ValueError):
        coreset_size(5, 0.0)


def test_coreset_covering_radius_non_increasing_and_covers_clusters():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(6, 8, generator=g) * 50
    pts = torch.cat([c + torch.randn(80, 8, generator=g) for c in centres])
    idx = greedy_coreset(pts, n=6, seed=0, progress=False)
    cluster_of = torch.arange(len(pts)) // 80
    assert set(cluster_of[idx].tolist()) == set(range(6))
    idx = greedy_coreset(pts, n=40, seed=0, progress=False)
    radii = [torch.cdist(pts, pts[idx[: k + 1]]).min(1).values.max().item() for k in range(len(idx))]
    assert all(r1 >= r2 - 1e-9 for r1, r2 in zip(radii, radii[1:]))


def test_coreset_with_duplicates_terminates_without_repeats():
    pts = torch.zeros(50, 4)
    pts[:5] = torch.eye(4, 4)[torch.tensor([0, 1, 2, 3, 0])]
    idx = greedy_coreset(pts, n=20, seed=0, progress=False)
    assert len(set(idx.tolist())) == 20


def test_coreset_deterministic_under_seed():
    feats = torch.randn(300, 256, generator=torch.Generator().manual_seed(0))
    assert torch.equal(greedy_coreset(feats, 0.1, seed=7, progress=False), greedy_coreset(feats, 0.1, seed=7, progress=False))
    assert not torch.equal(greedy_coreset(feats, 0.1, seed=7, progress=False), greedy_coreset(feats, 0.1, seed=8, progress=False))


@pytest.mark.parametrize("chunk", [7, 100, 4096])
def test_knn_faiss_equals_torch_equals_cdist(chunk):
    g = torch.Generator().manual_seed(0)
    bank, q = torch.randn(1000, 48, generator=g), torch.randn(70, 48, generator=g)
    ref = torch.cdist(q.double(), bank.double())
    ref_d, ref_i = ref.topk(3, largest=False)
    for d, i in (knn_torch(q, bank, 3, chunk=chunk), knn_faiss(q, bank, 3, chunk=chunk), knn_faiss(q, bank, 3)):
        assert torch.equal(i, ref_i)
        assert torch.allclose(d.double().sqrt(), ref_d, rtol=1e-4, atol=1e-3)


def test_knn_float16_bank_upcast_per_chunk():
    g = torch.Generator().manual_seed(1)
    bank, q = torch.randn(500, 32, generator=g).half(), torch.randn(20, 32, generator=g)
    d1, i1 = knn_faiss(q, bank, 1, chunk=64)
    d2, i2 = knn_torch(q, bank, 1, chunk=64)
    ref = torch.cdist(q, bank.float()).min(1)
    assert torch.equal(i1[:, 0], ref.indices) and torch.equal(i2[:, 0], ref.indices)


def test_adaptive_pool_matrix_is_torch_adaptive_pool():
    for L, n in [(4608, 1024), (9216, 1024), (2048, 384), (360, 1024), (12, 4)]:
        v = torch.randn(3, 1, L, dtype=torch.float64)
        assert torch.allclose(v[:, 0] @ adaptive_pool_matrix(L, n).T, F.adaptive_avg_pool1d(v, n)[:, 0])


@pytest.mark.parametrize("channels,target", [([512, 1024], 1024), ([40, 112], 1024), ([64, 128, 256], 384), ([96], 1024)])
def test_fast_aggregation_equals_official_pipeline(channels, target):
    g = torch.Generator().manual_seed(0)
    sizes = [16, 8, 4][: len(channels)]
    feats = [torch.randn(2, c, s, s, generator=g) for c, s in zip(channels, sizes)]
    fast = PatchAggregator(channels, 3, 1024, target)(feats)
    ref = aggregate_reference(feats, 3, 1024, target)
    assert fast.shape == (2, target, 16, 16)
    assert torch.allclose(fast, ref, atol=1e-5)


def test_official_aggregation_closed_form_wrn50():
    """Spec §2.2: dims 0-511 = layer2 3×3 weighted (centre 2/10, rest 1/10); dims 512+ = pairs of layer3 channels, 3×3 mean."""
    g = torch.Generator().manual_seed(0)
    l2, l3 = torch.randn(1, 512, 8, 8, generator=g), torch.randn(1, 1024, 4, 4, generator=g)
    out = PatchAggregator([512, 1024])([l2, l3])
    k = torch.full((1, 1, 3, 3), 0.1)
    k[0, 0, 1, 1] = 0.2
    dims_l2 = F.conv2d(l2.view(512, 1, 8, 8), k, padding=1).view(1, 512, 8, 8)
    m3 = F.avg_pool2d(l3, 3, 1, 1, count_include_pad=True)
    dims_l3 = F.interpolate(m3.view(1, 512, 2, 4, 4).mean(2), size=(8, 8), mode="bilinear", align_corners=False)
    assert torch.allclose(out[:, :512], dims_l2, atol=1e-5)
    assert torch.allclose(out[:, 512:], dims_l3, atol=1e-5)


def test_zero_padding_border_weights_and_anomalib_variant():
    f = torch.full((1, 4, 6, 6), 2.0)
    out = aggregate_anomalib([f])
    assert out[0, 0, 0, 0].item() == pytest.approx(2.0 * 4 / 9) and out[0, 0, 3, 3].item() == pytest.approx(2.0)


@pytest.mark.parametrize("shape", [(2, 40, 50), (1, 9, 13), (1, 224, 224)])
def test_gaussian_blur_equals_scipy(shape):
    m = torch.rand(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ref = np.stack([ndi.gaussian_filter(x, 4, truncate=4, mode="reflect") for x in m.numpy()])
    assert np.allclose(gaussian_blur(m, 4.0).numpy(), ref, atol=1e-10)
    const = torch.full((1, 20, 20), 3.0)
    assert torch.allclose(gaussian_blur(const, 4.0), const)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_row_store_gather_equals_in_memory_indexing(tmp_path, dtype):
    from anomalens.ops.row_store import RowStore

    rng = np.random.default_rng(0)
    data = rng.standard_normal((1000, 7)).astype(dtype)
    store = RowStore(tmp_path / "rows.bin", 7, dtype)
    for s in range(0, 1000, 130):
        store.append(data[s : s + 130])
    idx = np.r_[rng.choice(1000, 50, replace=False), 5, 6, 7, 999, 0]  # scattered, consecutive runs, ends
    idx = np.unique(idx)[rng.permutation(len(np.unique(idx)))]
    assert np.array_equal(store.gather(idx), data[idx])
    assert np.array_equal(store.gather(np.arange(1000)), data)
    with pytest.raises(IndexError):
        store.gather(np.array([1000]))
