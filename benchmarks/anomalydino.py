"""AnomalyDINO cost: our batched path vs the official per-image route (the reference port in
tests/anomalydino_reference.py), on identical random weights shaped as the released ViT-S/14 checkpoint, in one run.

Both sides do the same work: k references x 8 rotations into the memory bank (fit), then n test images scored (masking
optional). The official route runs one image per forward pass, a hub-style ViT, sklearn PCA, faiss, cv2-style map;
ours batches equal-size images per forward, caches the positional table, masks by a batched exact PCA.
Reported: fit ms per reference, predict ms per test image, the speed ratio, and the largest relative score difference.

    python benchmarks/anomalydino.py [--refs 2 --queries 6 --resolution 448 --masking --device cpu --threads 2]

Images: MVTec AD hazelnut from ../shared/assets/mvtec-reduced when present (256 px), else smooth synthetic ones.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import anomalydino_reference as ref  # noqa: E402


def released_like_state_dict(seed: int = 0) -> dict:
    """Random ViT-S/14 weights in the released hub layout (37 x 37 positional grid, mask_token, LayerScale)."""
    import timm

    torch.manual_seed(seed)
    vit = timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0, img_size=518, init_values=1.0)
    sd = {k: v.clone() for k, v in vit.state_dict().items()}
    g = torch.Generator().manual_seed(seed + 1)
    sd["pos_embed"] = torch.randn(sd["pos_embed"].shape, generator=g)
    sd["mask_token"] = torch.zeros(1, sd["cls_token"].shape[-1])
    return sd


def images(n_refs: int, n_queries: int) -> tuple[list[np.ndarray], list[np.ndarray], str]:
    from PIL import Image

    assets = ROOT.parent / "shared" / "assets" / "mvtec-reduced" / "hazelnut_reduced"
    if assets.is_dir():
        train = sorted((assets / "train" / "good").glob("*.png"))[:n_refs]
        test = sorted((assets / "test").glob("*/*.png"))[:n_queries]
        load = lambda p: np.asarray(Image.open(p).convert("RGB"))  # noqa: E731
        return [load(p) for p in train], [load(p) for p in test], "mvtec-reduced hazelnut (256 px)"
    g = torch.Generator().manual_seed(0)
    low = torch.rand(n_refs + n_queries, 3, 16, 16, generator=g)
    imgs = torch.nn.functional.interpolate(low, size=(256, 256), mode="bicubic").clamp(0, 1).mul(255).round().byte()
    arr = list(imgs.permute(0, 2, 3, 1).numpy())
    return arr[:n_refs], arr[n_refs:], "synthetic 256 px"


def official(sd, refs, queries, resolution, masking, threshold, device):
    sd = {k: v.to(device) for k, v in sd.items()}
    t0 = time.perf_counter()
    index = ref.build_index(ref.reference_features(sd, refs, resolution, True, 6))
    t1 = time.perf_counter()
    scores = []
    for q in queries:
        f, grid = ref.test_features(sd, q, resolution, 6)
        scores.append(ref.score_test_image(index, f, grid, q.shape[:2], masking=masking, threshold=threshold)[0])
    t2 = time.perf_counter()
    return np.array(scores), t1 - t0, t2 - t1


def ours(weights, refs, queries, resolution, masking, threshold, device, batch_size):
    import anomalens

    det = anomalens.create("anomalydino", weights=str(weights), device=device, resolution=resolution, masking=masking,
                           mask_threshold=threshold, batch_size=batch_size, knn="faiss" if device == "cpu" else "torch")
    det.setup()
    as_t = lambda xs: torch.from_numpy(np.stack(xs)).permute(0, 3, 1, 2).float() / 255.0  # noqa: E731
    t0 = time.perf_counter()
    det.fit(as_t(refs))
    t1 = time.perf_counter()
    pred = det.predict(as_t(queries))
    t2 = time.perf_counter()
    return pred.image_scores, t1 - t0, t2 - t1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--refs", type=int, default=2)
    ap.add_argument("--queries", type=int, default=6)
    ap.add_argument("--resolution", type=int, default=448)
    ap.add_argument("--masking", action="store_true")
    ap.add_argument("--threshold", type=float, default=5.0, help="mask threshold (random weights: 10 masks everything)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--json", default=None, help="write the figures here too")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from anomalens.progress import set_progress

    set_progress(False)
    refs, queries, source = images(args.refs, args.queries)
    sd = released_like_state_dict()
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "dinov2_vits14_random.pth"
        torch.save(sd, weights)
        # warm-up of both routes on one small image (allocator, first-call costs)
        official(sd, refs[:1], queries[:1], 112, args.masking, args.threshold, args.device)
        ours(weights, refs[:1], queries[:1], 112, args.masking, args.threshold, args.device, args.batch_size)
        s_off, fit_off, pred_off = official(sd, refs, queries, args.resolution, args.masking, args.threshold, args.device)
        s_our, fit_our, pred_our = ours(weights, refs, queries, args.resolution, args.masking, args.threshold, args.device,
                                        args.batch_size)
    rel = float(np.max(np.abs(s_our - s_off) / np.maximum(np.abs(s_off), 1e-12)))
    total_off, total_our = fit_off + pred_off, fit_our + pred_our
    out = {
        "images": source, "device": args.device, "threads": torch.get_num_threads(), "resolution": args.resolution,
        "references": len(refs), "rotations": 8, "test_images": len(queries), "masking": args.masking,
        "official_fit_ms_per_reference": 1000 * fit_off / len(refs), "ours_fit_ms_per_reference": 1000 * fit_our / len(refs),
        "official_predict_ms_per_image": 1000 * pred_off / len(queries), "ours_predict_ms_per_image": 1000 * pred_our / len(queries),
        "fit_speedup": fit_off / fit_our, "predict_speedup": pred_off / pred_our, "total_speedup": total_off / total_our,
        "max_relative_score_difference": rel, "rotation_source_of_official": ref.ROTATION_SOURCE,
    }
    for k, v in out.items():
        print(f"{k:38s} {v:.4g}" if isinstance(v, float) else f"{k:38s} {v}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
