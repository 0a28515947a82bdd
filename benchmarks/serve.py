"""`anomalens serve` throughput: one client sending requests one after another vs C concurrent clients, same server,
same run (the ratio is the figure; absolute requests/s depend on the machine).

    python benchmarks/serve.py [--n 64] [--clients 8] [--max-batch 8] [--device cpu] [--json out.json]

A random-init ResNet-18 PatchCore (72 -> 64 px crop) fitted on the synthetic weave category, served on a free
loopback port by a real `anomalens serve` subprocess; 256 px PNG uploads (multipart).
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=64, help="requests per phase")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    import httpx
    import torch

    import anomalens
    from anomalens.data.synthetic import make_synthetic_dataset
    from anomalens.progress import set_progress

    set_progress(False)
    torch.set_num_threads(2)
    tmp = Path(tempfile.mkdtemp())
    root = make_synthetic_dataset(tmp / "data", categories=["weave"])
    det = anomalens.create("patchcore", backbone="resnet18", weights=None, geometry="paper", resize=72, crop=64,
                           coreset_ratio=0.5, device=args.device).fit(str(root / "weave" / "train" / "good"))
    model_dir = det.save(tmp / "model")
    images = [p.read_bytes() for p in sorted((root / "weave" / "test").rglob("*.png"))]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "anomalens.cli.main", "serve", str(model_dir), "--port", str(port),
                             "--device", args.device, "--max-batch", str(args.max_batch), "--log-level", "warning"],
                            env=dict(os.environ, ANOMALENS_PROGRESS="0"))
    try:
        while True:
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        client = httpx.Client(timeout=120)
        one = lambda i: client.post(f"{base}/predict", files={"file": (f"{i}.png", images[i % len(images)], "image/png")})  # noqa: E731
        for i in range(4):  # warm-up
            one(i).raise_for_status()
        out = {}
        t0 = time.perf_counter()
        for i in range(args.n):
            one(i).raise_for_status()
        out["sequential req/s"] = round(args.n / (time.perf_counter() - t0), 1)
        before = httpx.get(f"{base}/metrics").json()["batches"]
        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            for r in pool.map(one, range(args.n)):
                r.raise_for_status()
        out[f"{args.clients} clients req/s"] = round(args.n / (time.perf_counter() - t0), 1)
        after = httpx.get(f"{base}/metrics").json()
        out["mean batch size (concurrent phase)"] = round((after["batches"]["images"] - before["images"])
                                                          / max(1, after["batches"]["count"] - before["count"]), 2)
        out["ratio concurrent / sequential"] = round(out[f"{args.clients} clients req/s"] / out["sequential req/s"], 2)
        out["latency p50 / p95 ms (all)"] = [round(after["latency_ms"]["p50"], 1), round(after["latency_ms"]["p95"], 1)]
    finally:
        proc.terminate()
        out["exit code after SIGTERM"] = proc.wait(60)
    print(json.dumps(out, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
