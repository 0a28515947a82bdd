"""`anomalens demo`: synthetic defects, PatchCore with the embedded ImageNet backbone, metrics and overlays."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .common import (DEVICE_HELP, FORCE_HELP, calibrate_with_warnings, check_device, console, create_with_fallback, esc, metrics_table, say,
                     split_holdout, user_errors, write_overlays)

DEMO_FPR = 0.01  # asked-for false-positive rate; n held-out normals resolve 1 / n without a warning
DEMO_SETTINGS = {"backbone": "tf_efficientnet_lite0", "weights": "imagenet", "coreset_ratio": 0.1}


@user_errors
def demo(
    out: Path = typer.Option(Path("anomalens-demo"), help="output folder (data, metrics.json, overlays)"),
    categories: Optional[List[str]] = typer.Option(None, "--category", help="synthetic categories (default: all)"),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    seed: int = typer.Option(0, help="seed of the synthetic data and the coreset"),
    random_init: bool = typer.Option(False, help="use a random-init backbone instead of the embedded ImageNet weights"),
    n_train: int = typer.Option(20, help="normal training images per category"),
    force: bool = typer.Option(False, "--force", help=FORCE_HELP),
):
    """Write synthetic defect data, fit PatchCore per category, evaluate, save metrics + overlays, print a table."""
    from anomalens.outputs import claim, start_writing

    check_device(device)
    if n_train < 2:
        raise ValueError(f"--n-train must be >= 2, got {n_train}")
    claim(files=[out / "metrics.json"], dirs=[out / "data", out / "overlays"])
    import anomalens
    from anomalens import metrics as _metrics
    from anomalens.data import MVTecAD
    from anomalens.data.synthetic import CATEGORIES, make_synthetic_dataset
    from anomalens.io import write_json

    anomalens.resolve_device(device)  # fail before any work on a bad device
    cats = list(categories or CATEGORIES)
    start_writing()  # the synthetic data is written with Pillow: mark out/data as ours first
    data_root = make_synthetic_dataset(out / "data", categories=cats, n_train=n_train, seed=seed)
    settings = dict(DEMO_SETTINGS, device=device, seed=seed)
    if random_init:
        settings["weights"] = None
    rows, reports, rand = {}, {}, False
    for cat in cats:
        console.print(f"[bold]{esc(cat)}[/bold]: fitting patchcore ({esc(settings['backbone'])})", highlight=False)
        model = create_with_fallback("patchcore", settings)
        train, calib = split_holdout(MVTecAD(data_root, cat, "train"), max(0.2, 2 / n_train), seed)  # >= 2 to calibrate
        model.fit(train)
        if calib is not None:  # the lowest false-positive rate its few held-out normals resolve: no warning by design
            calibrate_with_warnings(model, calib, max(DEMO_FPR, 1.0 / len(calib)), context=cat)
        report = anomalens.evaluate(model, MVTecAD(data_root, cat, "test"))
        rand = rand or model.random_init
        rows[cat] = report.metrics
        reports[cat] = report.to_dict() | {"threshold": model.threshold_}
        write_overlays(report.prediction, model.transform, out / "overlays" / cat, root=data_root / cat / "test",
                       scale=(getattr(model, "calibration_", None) or {}).get("map_scale"))
    table = _metrics.table(rows)
    write_json(out / "metrics.json", {"model": "patchcore", "settings": dict(settings), "random_init": rand,
                                      "per_category": reports, "mean": table.get("mean", {})})
    console.print(metrics_table("anomalens demo: PatchCore on synthetic defects", table, rand))
    say(f"metrics: {out / 'metrics.json'}   overlays: {out / 'overlays'}")


def register(app: typer.Typer) -> None:
    app.command()(demo)
