"""`anomalens demo | fit | predict | evaluate | models` — thin commands over the public API."""
from __future__ import annotations

import ast
import csv
import functools
import io
import json
import math
import sys
from pathlib import Path
from typing import List, Optional

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

import anomalens
from anomalens import metrics as _metrics
from anomalens.data import FolderDataset, MVTecAD, VisA
from anomalens.errors import AnomalensError
from anomalens.io import write_json, write_text

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Industrial visual anomaly detection.")
console = Console()
err_console = Console(stderr=True)

SHORT = {"image_auroc": "I-AUROC", "image_ap": "I-AP", "image_f1max": "I-F1max", "pixel_auroc": "P-AUROC",
         "pixel_ap": "P-AP", "pixel_f1max": "P-F1max", "aupro": "AUPRO"}
DEVICE_HELP = "auto (CUDA when present, else CPU), cpu, cuda or cuda:N"
DEMO_SETTINGS = {"backbone": "tf_efficientnet_lite0", "weights": "imagenet", "coreset_ratio": 0.1}


def user_errors(fn):
    """Turn user errors into one line on stderr and exit code 2 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (AnomalensError, ValueError, FileNotFoundError, NotADirectoryError, PermissionError) as exc:
            err_console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(2)

    return wrapper


def parse_settings(items: Optional[List[str]]) -> dict:
    """`key=value` pairs; values parsed as Python literals (numbers, None, lists), else kept as strings."""
    out = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"setting {item!r} must look like key=value")
        key, raw = item.split("=", 1)
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        out[key.strip().replace("-", "_")] = value
    return out


def metrics_table(title: str, rows: dict[str, dict], random_init: bool = False) -> Table:
    """A rich table of per-category metrics (+ mean row)."""
    keys = [k for k in _metrics.ALL_KEYS if any(k in r for r in rows.values())]
    t = Table(title=title + (" [yellow](random-init backbone)[/yellow]" if random_init else ""))
    t.add_column("category")
    for k in keys:
        t.add_column(SHORT.get(k, k), justify="right")
    for cat, r in rows.items():
        t.add_row(cat, *[("nan" if math.isnan(r.get(k, float("nan"))) else f"{r[k]:.3f}") for k in keys])
    return t


def write_overlays(pred: "anomalens.Prediction", transform, out_dir: Path, limit: int = 0) -> list[Path]:
    """Save image | heat-map overlay PNGs for a prediction; colour range shared across its images."""
    from anomalens.data import as_dataset
    from anomalens.viz import save_overlay

    if pred.paths[0].startswith("<tensor"):  # in-memory images have no file to draw on
        return []
    vmin, vmax = float(np.min(pred.anomaly_maps)), float(np.max(pred.anomaly_maps))
    ds = as_dataset(pred.paths, transform)
    written = []
    n = len(pred) if limit <= 0 else min(limit, len(pred))
    for i in range(n):
        img = transform.denormalize(ds[i].image).permute(1, 2, 0).numpy()
        mask = pred.masks[i] if pred.masks is not None else None
        name = "__".join(Path(pred.paths[i]).parts[-2:]).rsplit(".", 1)[0] + ".png"
        written.append(save_overlay(out_dir / name, img, pred.anomaly_maps[i], vmin, vmax, mask, float(pred.image_scores[i])))
    return written


def _split_holdout(ds, holdout: float, seed: int = 0):
    n = len(ds)
    n_hold = int(round(n * holdout))
    if holdout <= 0 or n_hold == 0 or n - n_hold < 1:
        return ds, None
    perm = np.random.default_rng(seed).permutation(n)
    return ds.subset(sorted(perm[n_hold:].tolist())), ds.subset(sorted(perm[:n_hold].tolist()))


@app.command()
@user_errors
def demo(
    out: Path = typer.Option(Path("anomalens-demo"), help="output folder (data, metrics.json, overlays)"),
    categories: Optional[List[str]] = typer.Option(None, "--category", help="synthetic categories (default: all)"),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    seed: int = typer.Option(0, help="seed of the synthetic data and the coreset"),
    random_init: bool = typer.Option(False, help="use a random-init backbone instead of the embedded ImageNet weights"),
    n_train: int = typer.Option(20, help="normal training images per category"),
):
    """Write synthetic defect data, fit PatchCore per category, evaluate, save metrics + overlays, print a table."""
    from anomalens.data.synthetic import CATEGORIES, make_synthetic_dataset

    anomalens.resolve_device(device)  # fail before any work on a bad device
    cats = list(categories or CATEGORIES)
    data_root = make_synthetic_dataset(out / "data", categories=cats, n_train=n_train, seed=seed)
    settings = dict(DEMO_SETTINGS, device=device, seed=seed)
    if random_init:
        settings["weights"] = None
    rows, reports, rand = {}, {}, False
    for cat in cats:
        console.print(f"[bold]{cat}[/bold]: fitting patchcore ({settings['backbone']})")
        model = _create_with_fallback("patchcore", settings)
        train, calib = _split_holdout(MVTecAD(data_root, cat, "train"), 0.2, seed)
        model.fit(train)
        if calib is not None:
            model.calibrate(calib, fpr=0.01)
        report = anomalens.evaluate(model, MVTecAD(data_root, cat, "test"))
        rand = rand or model.random_init
        rows[cat] = report.metrics
        reports[cat] = report.to_dict() | {"threshold": model.threshold_}
        write_overlays(report.prediction, model.transform, out / "overlays" / cat)
    table = _metrics.table(rows)
    write_json(out / "metrics.json", {"model": "patchcore", "settings": {k: v for k, v in settings.items()}, "random_init": rand,
                                      "per_category": reports, "mean": table.get("mean", {})})
    console.print(metrics_table("anomalens demo: PatchCore on synthetic defects", table, rand))
    console.print(f"metrics: {out / 'metrics.json'}   overlays: {out / 'overlays'}")


def _create_with_fallback(name: str, settings: dict):
    """Build a model; if its pretrained weights cannot be had, fall back to random init and say so."""
    try:
        return anomalens.create(name, **settings).setup()  # resolves weights before any work starts
    except anomalens.WeightsError as exc:
        err_console.print(f"[yellow]warning:[/yellow] {exc}\n[yellow]continuing with a random-init backbone[/yellow]")
        return anomalens.create(name, **dict(settings, weights=None))


def _dataset(root: Path, dataset: str, category: Optional[str], split: str):
    if dataset == "mvtec":
        if category is None:
            raise ValueError("--category is required for --dataset mvtec")
        return MVTecAD(root, category, split)
    if dataset == "visa":
        if category is None:
            raise ValueError("--category is required for --dataset visa")
        return VisA(root, category, split)
    if dataset == "folder":
        return FolderDataset(root)
    raise ValueError(f"unknown dataset kind {dataset!r}: use mvtec, visa or folder")


@app.command()
@user_errors
def fit(
    data: Path = typer.Argument(..., help="folder of normal images, or a dataset root with --dataset/--category"),
    out: Path = typer.Option(..., "--out", "-o", help="where to save the model (a directory)"),
    model: str = typer.Option("patchcore", help="model name (see `anomalens models`)"),
    dataset: str = typer.Option("folder", help="folder | mvtec | visa"),
    category: Optional[str] = typer.Option(None, help="category, for mvtec / visa"),
    setting: Optional[List[str]] = typer.Option(None, "--set", help="model setting key=value (repeatable)"),
    holdout: float = typer.Option(0.2, help="fraction of normal images held out to calibrate the threshold (0 = none)"),
    fpr: float = typer.Option(0.01, help="false-positive rate on held-out normals that sets the threshold"),
    device: str = typer.Option("auto", help=DEVICE_HELP),
):
    """Fit a detector on normal images, calibrate its threshold on held-out normals, save it."""
    settings = parse_settings(setting) | {"device": device}
    ds = _dataset(data, dataset, category, "train")
    det = anomalens.create(model, **settings).setup()
    train, calib = _split_holdout(ds, holdout)
    det.fit(train)
    if calib is not None:
        det.calibrate(calib, fpr=fpr)
    det.save(out)
    thr = det.threshold_
    console.print(f"saved {det.name} to {out} ({len(train)} training images; threshold {thr if thr is None else f'{thr:.4f}'})"
                  + (" [yellow]\\[random-init backbone][/yellow]" if det.random_init else ""))


@app.command()
@user_errors
def predict(
    model_dir: Path = typer.Argument(..., help="a model saved by `anomalens fit`"),
    images: List[str] = typer.Argument(..., help="image files, folders or glob patterns"),
    out: Path = typer.Option(Path("predictions"), "--out", "-o", help="output folder"),
    fmt: str = typer.Option("csv", "--format", help="csv or json"),
    overlays: bool = typer.Option(True, help="write heat-map overlays"),
    device: str = typer.Option("auto", help=DEVICE_HELP),
):
    """Score images with a saved model: a CSV/JSON of scores and labels, plus overlays."""
    if fmt not in ("csv", "json"):
        raise ValueError(f"--format must be csv or json, got {fmt!r}")
    det = anomalens.load(model_dir, device=device)
    pred = det.predict(images)
    records = pred.records()
    if fmt == "json":
        path = write_json(out / "predictions.json", {"info": pred.info, "threshold": det.threshold_, "predictions": records})
    else:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=["path", "score", "anomalous"])
        w.writeheader()
        w.writerows(records)
        path = write_text(out / "predictions.csv", buf.getvalue())
    if overlays:
        write_overlays(pred, det.transform, out / "overlays")
    n_anom = int(pred.labels.sum()) if pred.labels is not None else None
    console.print(f"scored {len(pred)} images -> {path}" + (f" ({n_anom} anomalous)" if n_anom is not None else " (no threshold set)"))


@app.command()
@user_errors
def evaluate(
    root: Path = typer.Argument(..., help="dataset root (MVTec AD or VisA layout)"),
    model: str = typer.Option("patchcore", help="model name"),
    dataset: str = typer.Option("mvtec", help="mvtec | visa"),
    categories: Optional[List[str]] = typer.Option(None, "--category", help="categories (default: all)"),
    setting: Optional[List[str]] = typer.Option(None, "--set", help="model setting key=value (repeatable)"),
    out: Path = typer.Option(Path("evaluation"), "--out", "-o", help="output folder for metrics.json / metrics.csv"),
    shots: int = typer.Option(0, help="few-shot: fit on K normal images drawn with --seed (0 = all)"),
    seed: int = typer.Option(0, help="seed of the few-shot draw"),
    device: str = typer.Option("auto", help=DEVICE_HELP),
):
    """Fit per category on the train split (zero-shot models: only with --shots), evaluate on the test split."""
    if dataset not in ("mvtec", "visa"):
        raise ValueError(f"--dataset must be mvtec or visa, got {dataset!r}")
    cats = list(categories or (MVTecAD.categories(root) if dataset == "mvtec" else VisA.categories(root)))
    settings = parse_settings(setting) | {"device": device}
    rows, rand = {}, False
    for cat in cats:
        det = anomalens.create(model, **settings)
        if not det.zero_shot or shots > 0:  # zero-shot methods score the test set as it is (the papers' protocol)
            train = _dataset(root, dataset, cat, "train")
            det.fit(train.sample(shots, seed) if shots > 0 else train)
        rep = anomalens.evaluate(det, _dataset(root, dataset, cat, "test"))
        rows[cat] = rep.metrics
        rand = rand or det.random_init
        console.print(str(rep))
    table = _metrics.table(rows)
    write_json(out / "metrics.json", {"model": model, "settings": settings, "shots": shots or "all", "seed": seed,
                                      "random_init": rand, "metrics": table})
    buf = io.StringIO()
    keys = [k for k in _metrics.ALL_KEYS if any(k in r for r in table.values())]
    w = csv.writer(buf)
    w.writerow(["category", *keys])
    for cat, r in table.items():
        w.writerow([cat, *[r.get(k, float("nan")) for k in keys]])
    write_text(out / "metrics.csv", buf.getvalue())
    console.print(metrics_table(f"{model} on {dataset}", table, rand))


@app.command()
def models():
    """List the available models."""
    t = Table(title="anomalens models")
    t.add_column("name")
    t.add_column("description")
    t.add_column("paper")
    from anomalens.registry import model_entries

    for e in model_entries():
        t.add_row(e.name, e.description, e.paper)
    console.print(t)


from .train import register as _register_train  # noqa: E402  (command modules register themselves)

_register_train(app)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
