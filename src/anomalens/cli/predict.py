"""`anomalens predict`: score images with a saved model; CSV/JSON of scores and labels, plus overlays."""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import List, Optional

import typer

from .common import DEVICE_HELP, RANDOM_INIT_TAG, console, parse_settings, user_errors, write_overlays


@user_errors
def predict(
    model_dir: Path = typer.Argument(..., help="a model saved by `anomalens fit`"),
    images: List[str] = typer.Argument(..., help="image files, folders or glob patterns"),
    out: Path = typer.Option(Path("predictions"), "--out", "-o", help="output folder"),
    fmt: str = typer.Option("csv", "--format", help="csv or json"),
    overlays: bool = typer.Option(True, help="write heat-map overlays"),
    setting: Optional[List[str]] = typer.Option(None, "--set", help="override a saved run-time setting key=value (e.g. batch_size=16)"),
    threshold: Optional[float] = typer.Option(None, help="decision threshold on the image score (overrides the calibrated one)"),
    device: str = typer.Option("auto", help=DEVICE_HELP),
):
    """Score images with a saved model: a CSV/JSON of scores and labels, plus overlays."""
    import anomalens
    from anomalens.io import write_json, write_text

    if fmt not in ("csv", "json"):
        raise ValueError(f"--format must be csv or json, got {fmt!r}")
    det = anomalens.load(model_dir, device=device, **parse_settings(setting))
    if threshold is not None:
        det.threshold_ = float(threshold)
    pred = det.predict(images)
    records = pred.records()
    if fmt == "json":
        path = write_json(out / "predictions.json", {"info": pred.info, "threshold": det.threshold_,
                                                      "calibration": getattr(det, "calibration_", None), "predictions": records})
    else:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=["path", "score", "anomalous", "random_init"])
        w.writeheader()
        w.writerows([r | {"random_init": det.random_init} for r in records])
        path = write_text(out / "predictions.csv", buf.getvalue())
    if overlays:
        write_overlays(pred, det.transform, out / "overlays")
    n_anom = int(pred.labels.sum()) if pred.labels is not None else None
    console.print(f"scored {len(pred)} images -> {path}" + (f" ({n_anom} anomalous)" if n_anom is not None else " (no threshold set)")
                  + (RANDOM_INIT_TAG if det.random_init else ""))


def register(app: typer.Typer) -> None:
    app.command()(predict)
