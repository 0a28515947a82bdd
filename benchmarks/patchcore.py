"""PatchCore: anomalens vs anomalib 2.7 vs a plain greedy coreset, same synthetic data, same random-init WRN-50-2.

One command runs everything; each fit runs in its own worker process so peak RSS is measured cleanly.

    pip install "anomalib==2.7.0" -c constraints.txt      # optional: the anchor (benchmark only)
    python benchmarks/patchcore.py                          # ≈300k patches: 391 images × 784 (MVTec hazelnut size)
    python benchmarks/patchcore.py --n-train 60 --ratio 0.01  # quick

Reports (ratios against baselines measured in the same run):
  coreset selection time: anomalens / anomalib / plain greedy (same ratio, same features)
  fit peak RSS: anomalens vs anomalib
  predict time per image vs the backbone forward alone
  image / pixel AUROC side by side (random-init backbone: shows parity, not paper accuracy)
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

CATEGORY = "disc"


def rss_peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def rss_now_mib() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _test_batches(root, transform, batch_size):
    from anomalens.data import MVTecAD, iter_batches

    ds = MVTecAD(root, CATEGORY, "test")
    return ds, list(iter_batches(ds, transform, batch_size))


def worker_anomalens(args) -> dict:
    import anomalens
    from anomalens.data import MVTecAD
    from anomalens.models.patchcore import estimator

    model = anomalens.create("patchcore", weights=None, coreset_ratio=args.ratio, seed=0, device="cpu", batch_size=8)
    model.setup()
    timing = {}
    inner = estimator.greedy_select

    def timed_select(*a, **k):
        t0 = time.perf_counter()
        out = inner(*a, **k)
        timing["coreset_s"] = time.perf_counter() - t0
        return out

    estimator.greedy_select = timed_select
    base = rss_now_mib()
    t0 = time.perf_counter()
    model.fit(MVTecAD(args.root, CATEGORY, "train"))
    fit_s = time.perf_counter() - t0
    peak = rss_peak_mib()
    ds, batches = _test_batches(args.root, model.transform, 8)
    extractor = model._features().extractor
    t0 = time.perf_counter()
    with torch.inference_mode():
        for images, _, _ in batches:
            extractor(images)
    backbone_s = (time.perf_counter() - t0) / len(ds)
    t0 = time.perf_counter()
    scores, maps = zip(*[model._predict_batch(images) for images, _, _ in batches])
    predict_s = (time.perf_counter() - t0) / len(ds)
    masks = np.concatenate([m.numpy() for _, m, _ in batches])
    from anomalens import metrics

    res = metrics.compute(np.concatenate(scores), ds.labels, np.concatenate(maps), masks)
    return {"fit_s": fit_s, "coreset_s": timing["coreset_s"], "rss_before_fit_mib": base, "fit_peak_rss_mib": peak,
            "bank_rows": int(model.memory_bank_.shape[0]), "n_patches": int(len(model.coreset_indices_) / args.ratio) if args.ratio < 1 else None,
            "backbone_s_per_image": backbone_s, "predict_s_per_image": predict_s,
            "image_auroc": res["image_auroc"], "pixel_auroc": res["pixel_auroc"], "aupro": res["aupro"]}


def worker_anomalib(args) -> dict:
    from anomalib.models.image.patchcore.torch_model import PatchcoreModel

    from anomalens.data import MVTecAD, iter_batches
    from anomalens.data.transforms import ImageTransform

    torch.manual_seed(0)
    model = PatchcoreModel(layers=["layer2", "layer3"], backbone="wide_resnet50_2", pre_trained=False, num_neighbors=9)
    sd = torch.load(args.backbone_file, weights_only=True)
    missing, unexpected = model.feature_extractor.feature_extractor.load_state_dict(sd, strict=False)
    assert not missing, missing  # same random-init weights as anomalens
    transform = ImageTransform(256, 224)
    model.train()
    base = rss_now_mib()
    t0 = time.perf_counter()
    with torch.no_grad():
        for images, _, _ in iter_batches(MVTecAD(args.root, CATEGORY, "train"), transform, 8):
            model(images)
        t1 = time.perf_counter()
        model.subsample_embedding(args.ratio)
    coreset_s = time.perf_counter() - t1
    fit_s = time.perf_counter() - t0
    peak = rss_peak_mib()
    model.eval()
    ds = MVTecAD(args.root, CATEGORY, "test")
    batches = list(iter_batches(ds, transform, 8))
    t0 = time.perf_counter()
    outs = []
    with torch.no_grad():
        for images, _, _ in batches:
            outs.append(model(images))
    predict_s = (time.perf_counter() - t0) / len(ds)
    scores = np.concatenate([o.pred_score.reshape(-1).numpy() for o in outs])
    maps = np.concatenate([o.anomaly_map[:, 0].numpy() for o in outs])
    masks = np.concatenate([m.numpy() for _, m, _ in batches])
    from anomalens import metrics

    res = metrics.compute(scores, ds.labels, maps, masks)
    return {"fit_s": fit_s, "coreset_s": coreset_s, "rss_before_fit_mib": base, "fit_peak_rss_mib": peak,
            "bank_rows": int(model.memory_bank.shape[0]), "predict_s_per_image": predict_s,
            "image_auroc": res["image_auroc"], "pixel_auroc": res["pixel_auroc"], "aupro": res["aupro"]}


def plain_vs_fast_coreset(n: int, ratio: float, max_steps: int = 400) -> dict:
    """Per-step time of the textbook loop (norm of x − c every step) vs ours, on the same N × 128 matrix."""
    from anomalens.ops.coreset import coreset_size, greedy_select

    x = torch.randn(n, 128, generator=torch.Generator().manual_seed(0))
    steps = min(coreset_size(n, ratio), max_steps)
    t0 = time.perf_counter()
    delta = torch.linalg.norm(x - x[:10].mean(0), dim=1)
    sel = []
    for _ in range(steps):
        j = int(torch.argmax(delta))
        sel.append(j)
        delta = torch.minimum(delta, torch.linalg.norm(x - x[j], dim=1))
    plain = (time.perf_counter() - t0) / steps
    t0 = time.perf_counter()
    greedy_select(x, steps, seed=0, progress=False)
    fast = (time.perf_counter() - t0) / steps
    return {"steps_timed": steps, "plain_ms_per_step": plain * 1e3, "anomalens_ms_per_step": fast * 1e3,
            "plain_s_extrapolated": plain * coreset_size(n, ratio)}


def run_worker(kind: str, args, backbone_file: Path, python: str) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as fh:
        out = fh.name
    cmd = [python, __file__, "--worker", kind, "--root", str(args.root), "--ratio", str(args.ratio),
           "--backbone-file", str(backbone_file), "--out", out]
    env = dict(os.environ, ANOMALENS_PROGRESS="0")
    subprocess.run(cmd, check=True, env=env)
    return json.loads(Path(out).read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-train", type=int, default=391, help="training images (391 × 784 = 306,544 patches)")
    ap.add_argument("--ratio", type=float, default=0.01)
    ap.add_argument("--root", type=Path, default=None)
    ap.add_argument("--anomalib-python", default=sys.executable, help="interpreter that has anomalib installed")
    ap.add_argument("--skip-anomalib", action="store_true")
    ap.add_argument("--json", default="")
    ap.add_argument("--worker", default="")
    ap.add_argument("--backbone-file", default="")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)

    if args.worker:
        res = worker_anomalens(args) if args.worker == "anomalens" else worker_anomalib(args)
        Path(args.out).write_text(json.dumps(res))
        return

    from anomalens.backbones import create_cnn
    from anomalens.data.synthetic import make_synthetic_dataset

    tmp = Path(tempfile.mkdtemp(prefix="bench-patchcore-"))
    args.root = args.root or make_synthetic_dataset(tmp / "data", categories=[CATEGORY], n_train=args.n_train,
                                                    n_test_good=10, n_test_per_defect=4, seed=0)
    backbone_file = tmp / "wrn50_random.pt"
    torch.save(create_cnn("wide_resnet50_2", weights=None, init_seed=0).model.state_dict(), backbone_file)

    results = {"n_train": args.n_train, "n_patches": args.n_train * 784, "ratio": args.ratio,
               "torch_threads": torch.get_num_threads()}
    results["anomalens"] = run_worker("anomalens", args, backbone_file, sys.executable)
    if not args.skip_anomalib:
        try:
            results["anomalib"] = run_worker("anomalib", args, backbone_file, args.anomalib_python)
        except subprocess.CalledProcessError as exc:
            print(f"anomalib run failed ({exc}); install it with: pip install anomalib==2.7.0 -c constraints.txt")
    results["plain_greedy"] = plain_vs_fast_coreset(args.n_train * 784, args.ratio)

    a = results["anomalens"]
    print(f"\nPatchCore, {results['n_patches']:,} patches, coreset {args.ratio:.0%}, random-init WRN-50-2, CPU threads {results['torch_threads']}")
    print(f"{'':28s}{'anomalens':>12s}{'anomalib':>12s}{'ratio':>9s}")
    b = results.get("anomalib")

    def row(name, key, fmt="{:12.2f}", better="lower"):
        va = a.get(key)
        vb = b.get(key) if b else None
        ratio = (vb / va if better == "lower" else va / vb) if (vb and va) else float("nan")
        print(f"{name:28s}" + fmt.format(va) + (fmt.format(vb) if vb is not None else f"{'-':>12s}") + f"{ratio:9.2f}")

    row("coreset selection (s)", "coreset_s")
    row("fit total (s)", "fit_s")
    for r in (a, b or {}):
        if r:
            r["fit_rss_increase_mib"] = r["fit_peak_rss_mib"] - r["rss_before_fit_mib"]
    row("fit peak RSS (MiB)", "fit_peak_rss_mib", "{:12.0f}")
    row("  increase during fit (MiB)", "fit_rss_increase_mib", "{:12.0f}")
    row("predict (s / image)", "predict_s_per_image", "{:12.3f}")
    row("image AUROC", "image_auroc", "{:12.3f}", better="higher")
    row("pixel AUROC", "pixel_auroc", "{:12.3f}", better="higher")
    row("AUPRO", "aupro", "{:12.3f}", better="higher")
    print(f"predict / backbone forward alone: {a['predict_s_per_image'] / a['backbone_s_per_image']:.2f}x "
          f"({a['predict_s_per_image'] * 1e3:.0f} ms vs {a['backbone_s_per_image'] * 1e3:.0f} ms per image)")
    p = results["plain_greedy"]
    print(f"coreset step: plain greedy {p['plain_ms_per_step']:.1f} ms, anomalens {p['anomalens_ms_per_step']:.1f} ms "
          f"({p['plain_ms_per_step'] / p['anomalens_ms_per_step']:.1f}x faster, same selection)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
