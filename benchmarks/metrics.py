"""Metric-suite cost: all metrics for N maps of S×S (default 500 × 224²), anomalens vs a naive implementation.

Naive = what research scripts do: scikit-learn's roc_auc_score, average_precision_score and precision_recall_curve
on the flattened pixels (three separate sorts in float64), plus the common PRO loop over 200 evenly spaced
thresholds with per-region overlaps. Ours = one sort for all four metrics (exact), or the binned/streaming path.
Prints seconds and peak traced memory of each, and the ratios, from one run.

    python benchmarks/metrics.py [--n 500] [--size 224] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import time
import tracemalloc

import numpy as np
from scipy import ndimage


def make_data(n: int, size: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    maps = rng.random((n, size, size), dtype=np.float32)
    masks = np.zeros((n, size, size), bool)
    labels = np.zeros(n, int)
    for i in range(n // 2):  # half the images carry 1-3 blob defects
        labels[i] = 1
        for _ in range(rng.integers(1, 4)):
            cy, cx, r = rng.integers(20, size - 20), rng.integers(20, size - 20), rng.integers(4, 15)
            yy, xx = np.ogrid[:size, :size]
            masks[i] |= (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
    maps += masks * 0.25  # overlapping score distributions: metrics well below 1
    maps = ndimage.gaussian_filter(maps, (0, 2, 2))
    scores = maps.reshape(n, -1).max(1) + rng.normal(0, 0.05, n)
    return scores, labels, maps, masks


def naive(scores, labels, maps, masks, steps: int = 200) -> dict:
    from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

    out = {"image_auroc": roc_auc_score(labels, scores), "image_ap": average_precision_score(labels, scores)}
    p, r, _ = precision_recall_curve(labels, scores)
    out["image_f1max"] = float(np.max(2 * p * r / np.maximum(p + r, 1e-12)))
    y, s = masks.ravel(), maps.ravel()
    out["pixel_auroc"] = roc_auc_score(y, s)
    out["pixel_ap"] = average_precision_score(y, s)
    p, r, _ = precision_recall_curve(y, s)
    out["pixel_f1max"] = float(np.max(2 * p * r / np.maximum(p + r, 1e-12)))
    # PRO over `steps` thresholds, region by region
    regions = []
    for i, m in enumerate(masks):
        lab, k = ndimage.label(m, structure=np.ones((3, 3)))
        regions += [(i, np.flatnonzero(lab.ravel() == j)) for j in range(1, k + 1)]
    neg = ~masks
    fprs, pros = [], []
    for t in np.linspace(maps.max(), maps.min(), steps):
        above = maps >= t
        fprs.append(np.logical_and(above, neg).sum() / neg.sum())
        pros.append(np.mean([above[i].ravel()[idx].mean() for i, idx in regions]))
    fprs, pros = np.array(fprs), np.array(pros)
    keep = fprs <= 0.3
    out["aupro"] = float(np.trapezoid(pros[keep], fprs[keep]) / 0.3)
    return out


def timed(fn, *args, **kw):
    tracemalloc.start()
    t0 = time.perf_counter()
    res = fn(*args, **kw)
    dt = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return res, dt, peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--json", default="")
    args = ap.parse_args()

    from anomalens import metrics

    data = make_data(args.n, args.size)
    rows = {}
    for name, fn, kw in [
        ("anomalens exact", metrics.compute, {}),
        ("anomalens binned (65536 bins)", metrics.compute, {"binned": True}),
        ("naive (sklearn + 200-threshold PRO)", naive, {}),
    ]:
        res, dt, peak = timed(fn, *data, **kw)
        rows[name] = {"seconds": dt, "peak_mib": peak / 2**20, "metrics": {k: float(v) for k, v in res.items()}}
    base = rows["naive (sklearn + 200-threshold PRO)"]
    print(f"{args.n} maps of {args.size}x{args.size} ({args.n * args.size * args.size / 1e6:.1f} M pixels)")
    print(f"{'implementation':40s} {'seconds':>9s} {'x faster':>9s} {'peak MiB':>9s} {'mem ratio':>9s}  aupro     pixel_auroc")
    for name, r in rows.items():
        print(f"{name:40s} {r['seconds']:9.2f} {base['seconds'] / r['seconds']:9.1f} {r['peak_mib']:9.0f} "
              f"{r['peak_mib'] / base['peak_mib']:9.2f}  {r['metrics']['aupro']:.6f}  {r['metrics']['pixel_auroc']:.6f}")
    b = rows["anomalens binned (65536 bins)"]["metrics"]
    print(f"binned error bounds: pixel_auroc ±{b['pixel_auroc_error_bound']:.2e}, aupro ±{b['aupro_error_bound']:.2e}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)


if __name__ == "__main__":
    main()
