"""Which geometry for a user's own images: every geometry of the shared layer on real data, plus large synthetic images.

Part 1 (accuracy): PatchCore with the embedded ImageNet EfficientNet-Lite0 (what a user without downloads gets) on
KolektorSDD (≈500 × 1265 grey, thin cracks) and the MVTec AD images in ../shared/assets (read as plain folders, so
"auto" resolves as it would for a user), each geometry fitted on the same normals and scored on the same test images:
image AUROC, pixel AUROC and AUPRO at the ORIGINAL image size (so geometries are compared on the same pixels), fit +
predict seconds, peak RSS. The `auto` row shows what geometry="auto" picked.

Part 2 (scaling): predict one synthetic image of 1, 4, 12 and 24 MP with geometry="tiles": ms and peak RSS of a child
process per size (time should grow with the pixels, memory stay flat).

    python benchmarks/geometry.py                     # both parts, ../shared/assets
    python benchmarks/geometry.py --part accuracy --ksdd-fit 30 --ksdd-test 40
    python benchmarks/geometry.py --part scaling --sizes 1 4 12 24
Writes benchmarks/results/geometry.json and prints a markdown table (the docs' "which geometry" table).
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

ROOT = Path(__file__).resolve().parents[1]
ASSETS = Path(os.environ.get("ANOMALENS_ASSETS", ROOT.parent / "shared" / "assets"))
GEOMETRIES = ["whole", "paper", "aspect", "tiles", "auto"]
SETTINGS = {"backbone": "tf_efficientnet_lite0", "weights": "imagenet", "coreset_ratio": 0.1, "device": "cpu"}


def _records_dataset(records, name="folder"):
    from anomalens.data import ImageDataset

    ds = ImageDataset(records, None, source=name)
    ds.name = name
    return ds


def ksdd(n_fit: int, n_test: int, seed: int = 0):
    """KolektorSDD: (fit normals, test records with masks). Normals split between fit and test, every defect in test."""
    from anomalens.data import SampleRecord

    folder = ASSETS / "kolektorsdd"
    pairs = []
    for img in sorted(folder.glob("kos*/Part*.jpg")):
        label = img.with_name(img.stem + "_label.png")
        from anomalens.data import load_mask

        defect = bool(load_mask(label).any())
        pairs.append((str(img), str(label), int(defect)))
    rng = np.random.default_rng(seed)
    normals = [p for p in pairs if p[2] == 0]
    defects = [p for p in pairs if p[2] == 1]
    rng.shuffle(normals)
    fit = [p[0] for p in normals[:n_fit]]
    rest = normals[n_fit:] + defects
    test = rest if n_test <= 0 else [rest[i] for i in sorted(rng.choice(len(rest), size=min(n_test, len(rest)), replace=False))]
    return fit, _records_dataset([SampleRecord(p, m, l) for p, m, l in test])


def mvtec_folder(category: str):
    """An MVTec AD category of ../shared/assets/mvtec-reduced read as a user's folder (name 'folder', not 'mvtec')."""
    from anomalens.data import MVTecAD

    root = ASSETS / "mvtec-reduced"
    fit = [s for s in MVTecAD(root, category, "train").paths]
    test = MVTecAD(root, category, "test")
    return fit, _records_dataset(list(test.records))


def original_size_metrics(pred, ds) -> dict:
    """Image AUROC, pixel AUROC and AUPRO with every map and mask at the image's original size."""
    from anomalens.data import load_mask
    from anomalens.metrics import compute

    maps, masks = [], []
    for i, rec in enumerate(ds.records):
        m = pred.map_at_original_size(i)
        m = np.nan_to_num(m, nan=float(np.nanmin(m)) if np.isfinite(m).any() else 0.0)  # outside a crop: lowest score
        gt = load_mask(rec.mask_path) if rec.mask_path else np.zeros(m.shape, bool)
        maps.append(m)
        masks.append(gt)
    shapes = {m.shape for m in maps}
    if len(shapes) > 1:  # mixed sizes: compare at the first size (nearest for masks)
        import torch

        H, W = maps[0].shape
        maps = [torch.nn.functional.interpolate(torch.from_numpy(m)[None, None], size=(H, W), mode="bilinear")[0, 0].numpy() for m in maps]
        masks = [torch.nn.functional.interpolate(torch.from_numpy(k.astype(np.float32))[None, None], size=(H, W))[0, 0].numpy() > 0.5
                 for k in masks]
    out = compute(pred.image_scores, ds.labels, np.stack(maps), np.stack(masks))
    return {k: round(float(out[k]), 4) for k in ("image_auroc", "pixel_auroc", "aupro")}


def run_one(fit, test, geometry: str, extra: dict) -> dict:
    import anomalens

    t0 = time.perf_counter()
    model = anomalens.create("patchcore", geometry=geometry, **{**SETTINGS, **extra}).fit(fit)
    t1 = time.perf_counter()
    pred = model.predict(test)
    t2 = time.perf_counter()
    row = {"geometry": geometry, "resolved": model.geometry_, **original_size_metrics(pred, test),
           "fit_s": round(t1 - t0, 1), "predict_s": round(t2 - t1, 1),
           "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}
    return row


def _child(args: list[str]) -> dict:
    """Run this script's --one mode in a child process (peak RSS per geometry, not the max over the run)."""
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def accuracy(args) -> list[dict]:
    rows = []
    sets = []
    if (ASSETS / "kolektorsdd").is_dir():
        sets.append("ksdd")
    if (ASSETS / "mvtec-reduced").is_dir():
        sets += ["mvtec:hazelnut_reduced", "mvtec:transistor_reduced"]
    if args.datasets:
        sets = list(args.datasets)
    if not sets:
        print(f"no real data at {ASSETS}: part 1 skipped", file=sys.stderr)
    for name in sets:
        done = {}
        for g in args.geometries:
            if g == "auto" and _auto_for(name, args) in done:  # what auto picks was just measured: the same run
                row = dict(done[_auto_for(name, args)], geometry="auto")
                rows.append(row)
                continue
            row = _child(["--one", name, g, "--ksdd-fit", str(args.ksdd_fit), "--ksdd-test", str(args.ksdd_test),
                          *[a for kv in args.set or [] for a in ("--set", kv)]])
            row["dataset"] = name
            row["settings"] = _settings(args.set)
            done[row["resolved"]] = row
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    return rows


def _auto_for(name: str, args) -> str:
    """What geometry="auto" resolves to on this set (the rule of `anomalens.data.geometry.auto_geometry`)."""
    import anomalens

    fit, _ = ksdd(args.ksdd_fit, args.ksdd_test) if name == "ksdd" else mvtec_folder(name.split(":", 1)[1])
    model = anomalens.create("patchcore", **{**SETTINGS, **_settings(args.set)})
    from anomalens.data import as_dataset

    return model._auto_geometry(as_dataset(fit))


def one(name: str, geometry: str, args) -> dict:
    fit, test = ksdd(args.ksdd_fit, args.ksdd_test) if name == "ksdd" else mvtec_folder(name.split(":", 1)[1])
    return run_one(fit, test, geometry, _settings(args.set))


def _settings(pairs: list[str]) -> dict:
    """--set key=value (JSON values: numbers, null, strings) over SETTINGS."""
    out = {}
    for pair in pairs or []:
        k, _, v = pair.partition("=")
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def scaling(args) -> list[dict]:
    rows = []
    work = Path(tempfile.mkdtemp(prefix="geometry-bench-"))
    from PIL import Image

    rng = np.random.default_rng(0)
    fit = []
    for i in range(2):  # the bank: two 1 MP normals
        p = work / f"fit{i}.png"
        Image.fromarray(rng.integers(90, 160, (768, 1024, 3), dtype=np.uint8)).save(p)
        fit.append(str(p))
    for mp in args.sizes:
        h = int(round((mp * 1e6 * 3 / 4) ** 0.5))
        w = int(round(h * 4 / 3))
        p = work / f"img{mp}.png"
        Image.fromarray(rng.integers(90, 160, (h, w, 3), dtype=np.uint8)).save(p)
        row = _child(["--scale-one", str(p), *fit])
        row.update({"megapixels": mp, "size": [h, w]})
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    return rows


def scale_one(path: str, fit: list[str]) -> dict:
    import anomalens

    model = anomalens.create("patchcore", geometry="tiles", **SETTINGS).fit(fit)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    pred = model.predict([path])
    ms = (time.perf_counter() - t0) * 1000
    full = pred.map_at_original_size(0)
    return {"predict_ms": round(ms), "map_shape": list(full.shape),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "rss_before_predict_mb": round(base / 1024)}


def table(rows: list[dict]) -> str:
    lines = ["| dataset | geometry | resolved | image AUROC | pixel AUROC | AUPRO | fit s | predict s | peak RSS MB |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['dataset']} | {r['geometry']} | {r['resolved']} | {r['image_auroc']} | {r['pixel_auroc']} | "
                     f"{r['aupro']} | {r['fit_s']} | {r['predict_s']} | {r['peak_rss_mb']} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=["accuracy", "scaling", "both"], default="both")
    ap.add_argument("--geometries", nargs="+", default=GEOMETRIES)
    ap.add_argument("--ksdd-fit", type=int, default=30)
    ap.add_argument("--ksdd-test", type=int, default=0, help="test images drawn from the rest (0 = all)")
    ap.add_argument("--sizes", nargs="+", type=float, default=[1, 4, 12, 24])
    ap.add_argument("--set", action="append", metavar="KEY=VALUE", help="a PatchCore setting for every run (repeatable)")
    ap.add_argument("--datasets", nargs="+", default=None, help="ksdd, mvtec:hazelnut_reduced, ... (default: all present)")
    ap.add_argument("--one", nargs=2, metavar=("DATASET", "GEOMETRY"))
    ap.add_argument("--scale-one", nargs="+", metavar="PATH")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "geometry.json"))
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.one[0], args.one[1], args)))
        return
    if args.scale_one:
        print(json.dumps(scale_one(args.scale_one[0], args.scale_one[1:])))
        return
    result = {"settings": SETTINGS, "threads": os.cpu_count()}
    if args.part in ("accuracy", "both"):
        result["accuracy"] = accuracy(args)
        print(table(result["accuracy"]))
    if args.part in ("scaling", "both"):
        result["scaling"] = scaling(args)
        print("\n| MP | predict ms | ms per MP | peak RSS MB |\n|---|---|---|---|")
        for r in result["scaling"]:
            print(f"| {r['megapixels']:g} | {r['predict_ms']} | {r['predict_ms'] / r['megapixels']:.0f} | {r['peak_rss_mb']} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():
        out = out.with_name(out.stem + time.strftime("-%Y%m%d-%H%M%S") + out.suffix)  # never replace an earlier result
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
