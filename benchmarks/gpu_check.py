"""GPU checks (never a test dependency): the CUDA path end to end, each figure against CPU in the same run.

    python benchmarks/gpu_check.py [--json out.json]

1. PatchCore (random-init ResNet-18, 128 px, synthetic data) on CUDA vs CPU: same scores, same AUROC.
2. Greedy coreset on CUDA: selection equal to CPU on 30k points, ms per step at 306,544 × 128.
3. PatchCore WRN-50-2 @ 224 on CUDA: predict time per image vs the backbone forward alone.
4. MuSc (random-init ViT-B-16-plus-240 @ 240, 20 images) on CUDA vs CPU: same scores, time.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time

import numpy as np
import torch


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    import anomalens
    from anomalens.data import MVTecAD
    from anomalens.data.synthetic import make_synthetic_dataset
    from anomalens.ops.coreset import greedy_select
    from anomalens.progress import set_progress

    set_progress(False)
    assert torch.cuda.is_available(), "no CUDA device"
    out = {"device": torch.cuda.get_device_name(0), "auto": str(anomalens.resolve_device("auto"))}
    root = make_synthetic_dataset(tempfile.mkdtemp(), categories=["disc"], n_train=40, n_test_good=6, n_test_per_defect=3)
    train, test = MVTecAD(root, "disc", "train"), MVTecAD(root, "disc", "test")

    # 1. PatchCore CPU vs CUDA
    res = {}
    for dev in ("cpu", "cuda"):
        m = anomalens.create("patchcore", backbone="resnet18", weights=None, resize=144, crop=128, coreset_ratio=0.1, device=dev)
        t0 = time.perf_counter(); m.fit(train); sync(); fit_s = time.perf_counter() - t0
        rep = anomalens.evaluate(m, test)
        res[dev] = (rep.prediction.image_scores, rep.metrics, fit_s)
    out["patchcore_small"] = {"max_rel_score_diff": float(np.max(np.abs(res["cpu"][0] - res["cuda"][0]) / np.abs(res["cpu"][0]))),
                              "auroc_cpu": res["cpu"][1]["image_auroc"], "auroc_cuda": res["cuda"][1]["image_auroc"],
                              "pixel_auroc_cpu": res["cpu"][1]["pixel_auroc"], "pixel_auroc_cuda": res["cuda"][1]["pixel_auroc"],
                              "fit_s_cpu": res["cpu"][2], "fit_s_cuda": res["cuda"][2]}
    print(json.dumps(out["patchcore_small"]), flush=True)

    # 2. coreset
    x = torch.randn(30000, 128, generator=torch.Generator().manual_seed(0)) * 3
    a = greedy_select(x, 300, seed=0, progress=False)
    b = greedy_select(x.cuda(), 300, seed=0, progress=False)
    big = torch.randn(306544, 128, device="cuda")
    greedy_select(big, 50, seed=0, progress=False); sync()
    t0 = time.perf_counter(); greedy_select(big, 3065, seed=0, progress=False); sync()
    out["coreset"] = {"same_selection_30k": bool(torch.equal(a, b)), "overlap_30k": len(set(a.tolist()) & set(b.tolist())) / 300,
                      "cuda_ms_per_step_306k": (time.perf_counter() - t0) / 3065 * 1e3}
    print(json.dumps(out["coreset"]), flush=True)

    # 3. WRN-50-2 predict vs backbone
    m = anomalens.create("patchcore", weights=None, coreset_ratio=0.1, device="cuda", batch_size=16).fit(train)
    from anomalens.data import iter_batches
    batches = [b for b, _, _ in iter_batches(test, m.transform, 16)]
    ext = m._features().extractor
    for _ in range(2):
        with torch.inference_mode():
            [ext(b.cuda()) for b in batches]
        sync()
    t0 = time.perf_counter()
    with torch.inference_mode():
        [ext(b.cuda()) for b in batches]
    sync(); bb = (time.perf_counter() - t0) / len(test)
    m._predict_batch(batches[0]); sync()
    t0 = time.perf_counter(); [m._predict_batch(b) for b in batches]; sync(); pr = (time.perf_counter() - t0) / len(test)
    out["patchcore_wrn50_cuda"] = {"backbone_ms_per_image": bb * 1e3, "predict_ms_per_image": pr * 1e3, "ratio": pr / bb}
    print(json.dumps(out["patchcore_wrn50_cuda"]), flush=True)

    # 4. MuSc CPU vs CUDA
    g = torch.Generator().manual_seed(0)
    imgs = (0.5 + 0.05 * torch.randn(20, 3, 240, 240, generator=g)).clamp(0, 1)
    imgs[3, :, 100:130, 100:130] = 1.0
    ms = {}
    for dev in ("cpu", "cuda"):
        mm = anomalens.create("musc", backbone="ViT-B-16-plus-240", weights=None, image_size=240, device=dev)
        mm.predict(imgs[:4]) if dev == "cuda" else None
        sync(); t0 = time.perf_counter(); p = mm.predict(imgs); sync()
        ms[dev] = (p.image_scores, p.anomaly_maps, time.perf_counter() - t0)
    out["musc"] = {"max_abs_score_diff": float(np.abs(ms["cpu"][0] - ms["cuda"][0]).max()),
                   "max_abs_map_diff": float(np.abs(ms["cpu"][1] - ms["cuda"][1]).max()),
                   "argmax_cpu": int(np.argmax(ms["cpu"][0])), "argmax_cuda": int(np.argmax(ms["cuda"][0])),
                   "seconds_cpu": ms["cpu"][2], "seconds_cuda": ms["cuda"][2]}
    print(json.dumps(out["musc"]), flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)


if __name__ == "__main__":
    main()
