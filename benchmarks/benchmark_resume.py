"""`anomalens benchmark` on the demo data: first run vs resumed rerun (and a rerun missing one category), plus the
time of `anomalens report` on the run.

    python benchmarks/benchmark_resume.py [--json out.json]

PatchCore with the ImageNet EfficientNet-Lite0 that ships inside the pip package (the demo's settings), the
three synthetic categories at their default size (20 train, 21 test images each, 256 px), CPU.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", default="")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    import torch

    from anomalens.benchmark import run_benchmark
    from anomalens.data.synthetic import make_synthetic_dataset
    from anomalens.progress import set_progress
    from anomalens.report import write_report

    set_progress(False)
    torch.set_num_threads(2)
    tmp = Path(tempfile.mkdtemp())
    root = make_synthetic_dataset(tmp / "data")
    settings = {"backbone": "tf_efficientnet_lite0", "weights": "imagenet", "coreset_ratio": 0.1}
    run = lambda: run_benchmark("mvtec", root, ["patchcore"], tmp / "run", overrides=settings, device=args.device)  # noqa: E731
    out = {}
    for name, prep in (("first run", None), ("resumed rerun (all done)", None),
                       ("rerun with one category missing", lambda: (tmp / "run" / "results" / "patchcore" / "disc.json").unlink())):
        if prep:
            prep()
        t0 = time.perf_counter()
        run()
        out[name] = round(time.perf_counter() - t0, 2)
    t0 = time.perf_counter()
    html = write_report(tmp / "run", tmp / "report.html")
    out["report"] = round(time.perf_counter() - t0, 2)
    out["report_kib"] = round(html.stat().st_size / 1024, 1)
    out["ratio first / resumed"] = round(out["first run"] / out["resumed rerun (all done)"], 1)
    summary = (tmp / "run" / "summary.md").read_text()
    print(json.dumps(out, indent=2))
    print(summary)
    if args.json:
        Path(args.json).write_text(json.dumps({"timings_s": out, "summary_md": summary}, indent=2))


if __name__ == "__main__":
    main()
