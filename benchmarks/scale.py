"""Folders bigger than memory: single-process streaming `predict` vs Ray Data with N model actors, same model, same
images, same run (ratios are the figures; absolute images/s depend on the machine).

    python benchmarks/scale.py [--counts 1000,10000] [--actors 2] [--cpus 2] [--json out.json]

For each count, a folder of synthetic 256 px PNGs (64 distinct weave test images, repeated under new names) is
scored by a random-init ResNet-18 PatchCore (72 -> 64 px crop) saved once:

  * stream: `predict_stream` in a fresh subprocess (2 reading threads, 2 torch threads);
  * ray: `predict_ray` in a fresh subprocess on a local cluster of --cpus CPUs with --actors actors; the cluster is
    started before the clock starts (its start-up time is reported apart).

Reported per route: images/s, peak RSS of the scoring process(es) (VmHWM from /proc: the driver for stream, every
model actor for Ray), and how both change from the smallest to the largest count (bounded memory: RSS must stay
flat as the count grows). Both routes write the same rows; the script checks that the scores agree.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


def _peak_rss_mib(pid: int | str = "self") -> float:
    """VmHWM (peak resident set) of a process, MiB; 0 when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _actor_pids() -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if b"MapWorker(MapBatches(Scorer))" in (d / "cmdline").read_bytes():
                    pids.append(int(d.name))
            except OSError:
                pass
    return pids


def _child(args) -> None:
    """One route in this (fresh) process; prints a JSON line."""
    import torch

    import anomalens
    from anomalens.progress import set_progress

    set_progress(False)
    torch.set_num_threads(2)
    out = Path(args.out)
    if args.route == "stream":
        from anomalens.deploy.stream import predict_stream

        det = anomalens.load(args.model, device="cpu")
        t0 = time.perf_counter()
        s = predict_stream(det, args.data, out, num_workers=2)
        wall = time.perf_counter() - t0
        res = {"wall_s": wall, "n": s.n_scored, "peak_rss_mib": [_peak_rss_mib()]}
    else:
        import ray

        from anomalens.deploy.ray_predict import predict_ray

        t0 = time.perf_counter()
        ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
        startup = time.perf_counter() - t0
        peaks: dict[int, float] = {}
        stop = threading.Event()

        def sample():
            while not stop.is_set():
                for pid in _actor_pids():
                    peaks[pid] = max(peaks.get(pid, 0.0), _peak_rss_mib(pid))
                stop.wait(0.5)

        th = threading.Thread(target=sample, daemon=True)
        th.start()
        t0 = time.perf_counter()
        s = predict_ray(args.model, args.data, out, num_actors=args.actors, device="cpu")
        wall = time.perf_counter() - t0
        stop.set()
        th.join()
        ray.shutdown()
        res = {"wall_s": wall, "n": s.n_scored, "startup_s": startup, "peak_rss_mib": sorted(peaks.values()),
               "driver_peak_rss_mib": _peak_rss_mib()}
    print(json.dumps(res))


def _scores(out_dir: Path) -> dict[str, float]:
    with open(out_dir / "predictions.csv", newline="") as fh:
        return {r["path"]: float(r["score"]) for r in csv.DictReader(fh)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--counts", default="1000,10000")
    ap.add_argument("--actors", type=int, default=2)
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--json", default="")
    ap.add_argument("--route", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.route:
        return _child(args)

    import anomalens
    from anomalens.data.synthetic import make_synthetic_dataset
    from anomalens.progress import set_progress

    set_progress(False)
    tmp = Path(tempfile.mkdtemp(prefix="anomalens-scale-"))
    root = make_synthetic_dataset(tmp / "data", categories=["weave"])
    det = anomalens.create("patchcore", backbone="resnet18", weights=None, geometry="paper", resize=72, crop=64,
                           coreset_ratio=0.5, device="cpu").fit(str(root / "weave" / "train" / "good"))
    model_dir = det.save(tmp / "model")
    pool = [p.read_bytes() for p in sorted((root / "weave" / "test").rglob("*.png"))][:64]
    results = []
    for n in [int(c) for c in args.counts.split(",")]:
        folder = tmp / f"images-{n}"
        for i in range(n):  # 100 images per sub-folder, as a camera's day folders would be
            d = folder / f"{i // 100:04d}"
            d.mkdir(parents=True, exist_ok=True)
            (d / f"img{i:06d}.png").write_bytes(pool[i % len(pool)])
        row = {"count": n}
        for route in ("stream", "ray"):
            out = tmp / f"out-{route}-{n}"
            cmd = [sys.executable, __file__, "--route", route, "--model", str(model_dir), "--data", str(folder),
                   "--out", str(out), "--actors", str(args.actors), "--cpus", str(args.cpus)]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, ANOMALENS_PROGRESS="0"))
            if proc.returncode:
                raise SystemExit(f"{route} run failed:\n{proc.stderr[-3000:]}")
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            if r["n"] != n:
                raise SystemExit(f"{route} scored {r['n']} of {n} images")
            r["images_per_s"] = n / r["wall_s"]
            row[route] = r
        a, b = _scores(tmp / f"out-stream-{n}"), _scores(tmp / f"out-ray-{n}")
        row["max_abs_score_diff"] = max(abs(a[p] - b[p]) for p in a) if set(a) == set(b) else float("nan")
        row["ray_vs_stream_throughput"] = row["ray"]["images_per_s"] / row["stream"]["images_per_s"]
        results.append(row)
        print(f"{n} images: stream {row['stream']['images_per_s']:.0f} img/s (peak RSS "
              f"{row['stream']['peak_rss_mib'][0]:.0f} MiB); ray {args.actors} actors {row['ray']['images_per_s']:.0f} img/s "
              f"({row['ray_vs_stream_throughput']:.2f}x; cluster start {row['ray']['startup_s']:.1f} s apart; actor peak "
              f"RSS {', '.join(f'{m:.0f}' for m in row['ray']['peak_rss_mib'])} MiB, driver "
              f"{row['ray']['driver_peak_rss_mib']:.0f} MiB); max |d score| {row['max_abs_score_diff']:.1e}", flush=True)
    if len(results) > 1:
        lo, hi = results[0], results[-1]
        growth = {route: max(hi[route]["peak_rss_mib"]) / max(lo[route]["peak_rss_mib"]) for route in ("stream", "ray")}
        growth["ray_driver"] = hi["ray"]["driver_peak_rss_mib"] / lo["ray"]["driver_peak_rss_mib"]
        print(f"peak RSS {hi['count']} vs {lo['count']} images: stream {growth['stream']:.2f}x, ray actors "
              f"{growth['ray']:.2f}x, ray driver {growth['ray_driver']:.2f}x")
        results.append({"rss_growth": growth})
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
