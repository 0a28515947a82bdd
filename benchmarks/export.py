"""ONNX export: onnxruntime vs the torch model on CPU, ms per image, same inputs, same run (the ratio is the figure).

    python benchmarks/export.py [--model patchcore|winclip|clipad] [--backbone tf_efficientnet_lite0] [--batch 8]
                                [--repeats 5] [--threads 2] [--json out.json]

PatchCore defaults to the ImageNet EfficientNet-Lite0 that ships in the pip package (real weights, offline) fitted
on the synthetic weave category at the paper geometry (256 -> 224); WinCLIP and CLIP-AD (SDP) run random-init
(`weights=None`, ViT-B-16-plus-240 structure) zero-shot. Both routes score the same transformed batch; timings interleave the two
routes repeat by repeat and keep each route's median, so background load hits both alike. Parity of scores and
maps is printed with the timings.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path


def _model(name: str, backbone: str, root: Path):
    import anomalens

    if name == "patchcore":
        return anomalens.create("patchcore", backbone=backbone, geometry="paper", device="cpu").fit(
            str(root / "weave" / "train" / "good"))
    if name == "winclip":
        return anomalens.create("winclip", weights=None, class_name="fabric", device="cpu").fit(None)
    if name == "clipad":
        return anomalens.create("clipad", weights=None, class_name="fabric", device="cpu").fit(None)
    raise SystemExit(f"--model must be patchcore, winclip or clipad, got {name!r}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="patchcore")
    ap.add_argument("--backbone", default="tf_efficientnet_lite0")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    import numpy as np
    import torch

    from anomalens.data.synthetic import make_synthetic_dataset
    from anomalens.deploy.export import OnnxModel, export_onnx, input_size, parity
    from anomalens.progress import set_progress

    set_progress(False)
    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp())
    root = make_synthetic_dataset(tmp / "data", categories=["weave"])
    det = _model(args.model, args.backbone, root)
    size = (det.image_size, det.image_size) if args.model in ("winclip", "clipad") else None  # square synthetic images
    H, W = input_size(det, size)
    paths = sorted(str(p) for p in (root / "weave" / "test").rglob("*.png"))[: args.batch]
    from anomalens.data import load_image

    x = torch.stack([det.transform.image(load_image(p)) for p in paths])
    if x.shape[-2:] != (H, W):
        raise SystemExit(f"transform gives {tuple(x.shape[-2:])}, graph expects {(H, W)}")
    onnx_path = export_onnx(det, tmp / "model.onnx", size)
    ort_model = OnnxModel(onnx_path, threads=args.threads)

    def torch_route():
        with torch.inference_mode():
            det._postprocess(*det._score_batch(x))

    def ort_route():
        ort_model.run(x)

    torch_route(), ort_route()  # warm-up (allocations, graph optimisation)
    times = {"torch": [], "onnxruntime": []}
    for _ in range(args.repeats):
        for name, fn in (("torch", torch_route), ("onnxruntime", ort_route)):
            t0 = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t0) * 1000 / len(x))
    ms = {k: statistics.median(v) for k, v in times.items()}
    p = parity(det, onnx_path, x)
    out = {"model": det.name, "backbone": args.backbone if args.model == "patchcore" else "ViT-B-16-plus-240 (random init)",
           "input": [len(x), 3, H, W], "threads": args.threads, "ms_per_image": ms,
           "speedup_onnxruntime_vs_torch": ms["torch"] / ms["onnxruntime"], "parity": p,
           "onnx_mib": onnx_path.stat().st_size / 2**20}
    print(f"{det.name} {H}x{W}, batch {len(x)}, {args.threads} threads: torch {ms['torch']:.1f} ms/image, "
          f"onnxruntime {ms['onnxruntime']:.1f} ms/image ({out['speedup_onnxruntime_vs_torch']:.2f}x); "
          f"max |d score| {p['score_max_abs']:.1e}, max |d map| {p['map_max_abs']:.1e}; file {out['onnx_mib']:.1f} MiB")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
