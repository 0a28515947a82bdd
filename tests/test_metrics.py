"""Metrics against scikit-learn and against slow brute-force references written here."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import average_precision_score, roc_auc_score

from anomalens import metrics
from anomalens.metrics import StreamingPixelMetrics, pixel_metrics


def _f1max_bruteforce(scores, labels):
    best = 0.0
    for t in np.unique(scores):
        pred = scores >= t
        tp = np.sum(pred & labels)
        fp = np.sum(pred & ~labels)
        fn = np.sum(~pred & labels)
        if tp:
            best = max(best, 2 * tp / (2 * tp + fp + fn))
    return best


def _aupro_bruteforce(maps, masks, limit=0.3):
    """Threshold by threshold: FPR over normal pixels, PRO as the mean overlap of 8-connected regions."""
    regions = []
    for i, m in enumerate(masks):
        lab, n = ndimage.label(m, structure=np.ones((3, 3)))
        regions += [(i, lab == k) for k in range(1, n + 1)]
    neg = ~masks
    pts = [(0.0, 0.0)]
    for t in np.unique(maps)[::-1]:
        above = maps >= t
        fpr = above[neg].sum() / neg.sum()
        pro = np.mean([above[i][r].mean() for i, r in regions])
        pts.append((fpr, pro))
    x = np.array([p[0] for p in pts])
    y = np.array([p[1] for p in pts])
    # integrate up to `limit`, interpolating at the limit
    area = 0.0
    for k in range(1, len(x)):
        x0, x1, y0, y1 = x[k - 1], x[k], y[k - 1], y[k]
        if x0 >= limit:
            break
        if x1 > limit:
            y1 = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
            x1 = limit
        area += (x1 - x0) * (y0 + y1) / 2
    return area / limit


@pytest.mark.parametrize("seed", range(5))
def test_image_metrics_match_sklearn_and_bruteforce(seed):
    rng = np.random.default_rng(seed)
    scores = np.round(rng.random(60), 1)  # many ties on purpose
    labels = rng.random(60) < 0.4
    out = metrics.compute(scores, labels)
    assert out["image_auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert out["image_ap"] == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
    assert out["image_f1max"] == pytest.approx(_f1max_bruteforce(scores, labels), abs=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_pixel_metrics_match_sklearn_and_bruteforce(seed):
    rng = np.random.default_rng(seed)
    masks = np.zeros((4, 12, 12), bool)
    masks[0, 2:5, 2:5] = True
    masks[1, 7:9, 1:10] = True
    masks[1, 1, 1] = True  # a one-pixel region
    maps = np.round(rng.random((4, 12, 12)) + masks * rng.random() * 0.8, 2).astype(np.float32)
    out = pixel_metrics(maps, masks)
    assert out["pixel_auroc"] == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-9)
    assert out["pixel_ap"] == pytest.approx(average_precision_score(masks.ravel(), maps.ravel()), abs=1e-9)
    assert out["pixel_f1max"] == pytest.approx(_f1max_bruteforce(maps.ravel(), masks.ravel()), abs=1e-9)
    assert out["aupro"] == pytest.approx(_aupro_bruteforce(maps, masks), abs=1e-9)


def test_aupro_perfect_map_is_one_and_monotone_invariant():
    rng = np.random.default_rng(0)
    masks = np.zeros((3, 16, 16), bool)
    masks[0, 3:7, 3:7] = True
    masks[2, 10:12, 5:15] = True
    maps = rng.random((3, 16, 16)).astype(np.float32) * 0.5 + masks
    assert pixel_metrics(maps, masks)["aupro"] == pytest.approx(1.0)
    noisy = rng.random((3, 16, 16)).astype(np.float32) + masks * 0.3
    a = pixel_metrics(noisy, masks)
    b = pixel_metrics(np.exp(3 * noisy), masks)  # strictly increasing transform
    for k in a:
        assert a[k] == pytest.approx(b[k], abs=1e-9)


def test_aupro_uses_8_connectivity():
    """Two diagonal pixels are one region: detecting one of them gives PRO 0.5, not (1 + 0) / 2 per region."""
    masks = np.zeros((1, 6, 6), bool)
    masks[0, 1, 1] = masks[0, 2, 2] = True
    masks[0, 4, 4] = True  # a separate region, far away
    maps = np.zeros((1, 6, 6), np.float32)
    maps[0, 1, 1] = 2.0
    maps[0, 4, 4] = 2.0
    from anomalens.metrics.pixel import pixel_groups
    from anomalens.metrics.curves import pro_curve

    g = pixel_groups(maps, masks)
    assert g.n_regions == 2
    fpr, pro = pro_curve(g)
    assert pro[1] == pytest.approx((0.5 + 1.0) / 2)


def test_no_regions_gives_nan_and_constant_scores_half():
    masks = np.zeros((2, 5, 5), bool)
    out = pixel_metrics(np.random.default_rng(0).random((2, 5, 5)), masks)
    assert math.isnan(out["aupro"]) and math.isnan(out["pixel_auroc"])
    assert metrics.compute(np.ones(10), np.arange(10) % 2)["image_auroc"] == pytest.approx(0.5)
    assert metrics.compute(np.arange(10.0), np.arange(10) >= 5)["image_auroc"] == pytest.approx(1.0)


def test_binned_within_stated_bound_and_streaming_equals_one_shot():
    rng = np.random.default_rng(1)
    masks = np.zeros((6, 32, 32), bool)
    for i in range(6):
        masks[i, rng.integers(0, 20) :, rng.integers(0, 20) :][:6, :6] = True
    maps = (rng.random((6, 32, 32)) + masks * 0.7).astype(np.float32)
    exact = pixel_metrics(maps, masks)
    for n_bins in (64, 1024):
        binned = metrics.compute(np.zeros(6), np.arange(6) % 2, maps, masks, binned=True, n_bins=n_bins)
        assert abs(binned["pixel_auroc"] - exact["pixel_auroc"]) <= binned["pixel_auroc_error_bound"] + 1e-12
        assert abs(binned["aupro"] - exact["aupro"]) <= binned["aupro_error_bound"] + 1e-12
    lo, hi = float(maps.min()), float(maps.max())
    stream = StreamingPixelMetrics((lo, hi), 1024)
    for i in range(0, 6, 2):
        stream.update(maps[i : i + 2], masks[i : i + 2])
    one = StreamingPixelMetrics((lo, hi), 1024).update(maps, masks)
    assert stream.compute() == one.compute()
    fine = StreamingPixelMetrics((lo, hi), 1 << 20).update(maps, masks).compute()
    assert fine["pixel_auroc_error_bound"] < binned["pixel_auroc_error_bound"]


def test_compute_keys_and_table_mean():
    rng = np.random.default_rng(0)
    out = metrics.compute(rng.random(8), np.arange(8) % 2)
    assert set(out) == set(metrics.IMAGE_KEYS)
    maps = rng.random((8, 4, 4)).astype(np.float32)
    masks = np.zeros((8, 4, 4), bool)
    masks[1::2, 1:3, 1:3] = True
    out = metrics.compute(rng.random(8), np.arange(8) % 2, maps, masks)
    assert set(out) == set(metrics.ALL_KEYS) and all(0 <= v <= 1 for v in out.values())
    t = metrics.table({"a": {"image_auroc": 0.5}, "b": {"image_auroc": 1.0}})
    assert t["mean"]["image_auroc"] == pytest.approx(0.75)
    with pytest.raises(ValueError):
        metrics.compute(rng.random(8), np.arange(8) % 2, maps, None)


def _pro_musc_loop(maps, masks, steps=200, limit=0.3):
    """The cflow-ad / MuSc loop as written there: threshold by threshold, regions with 8-connectivity."""
    regions = []
    for i, m in enumerate(masks):
        lab, n = ndimage.label(m, structure=np.ones((3, 3)))
        regions += [(i, lab == k) for k in range(1, n + 1)]
    lo, hi = maps.min(), maps.max()
    fprs, pros = [], []
    for th in np.arange(lo, hi, (hi - lo) / steps):
        b = maps > th
        pros.append(np.mean([b[i][r].sum() / r.sum() for i, r in regions]))
        fprs.append((b & ~masks).sum() / (~masks).sum())
    fprs, pros = np.array(fprs), np.array(pros)
    keep = fprs < limit
    f = fprs[keep]
    f = (f - f.min()) / (f.max() - f.min())
    o = np.argsort(f, kind="stable")
    return np.trapezoid(pros[keep][o], f[o])


@pytest.mark.parametrize("seed", range(3))
def test_pro_musc_equals_the_reference_loop(seed):
    rng = np.random.default_rng(seed)
    masks = np.zeros((3, 20, 20), bool)
    masks[0, 3:8, 3:8] = True
    masks[2, 10:13, 2:18] = True
    maps = (rng.random((3, 20, 20)) + masks * 0.5).astype(np.float32)
    assert metrics.pro_musc(maps, masks) == pytest.approx(_pro_musc_loop(maps, masks), abs=1e-9)
