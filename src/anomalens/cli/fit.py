"""`anomalens fit`: fit a detector on normal images, calibrate its threshold on held-out normals, save it."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .common import DEVICE_HELP, RANDOM_INIT_TAG, SET_HELP, console, open_dataset, parse_settings, split_holdout, user_errors


@user_errors
def fit(
    data: Path = typer.Argument(..., help="folder of normal images, or a dataset root with --dataset/--category"),
    out: Path = typer.Option(..., "--out", "-o", help="where to save the model (a directory)"),
    model: str = typer.Option("patchcore", help="model name (see `anomalens models`)"),
    dataset: str = typer.Option("folder", help="folder | mvtec | visa"),
    category: Optional[str] = typer.Option(None, help="category, for mvtec / visa"),
    setting: Optional[List[str]] = typer.Option(None, "--set", help=SET_HELP),
    holdout: float = typer.Option(0.2, help="fraction of normal images held out to calibrate the threshold (0 = none)"),
    fpr: float = typer.Option(0.01, help="false-positive rate on held-out normals that sets the threshold"),
    device: str = typer.Option("auto", help=DEVICE_HELP),
):
    """Fit a detector on normal images, calibrate its threshold on held-out normals, save it."""
    import anomalens

    settings = parse_settings(setting) | {"device": device}
    ds = open_dataset(data, dataset, category, "train")
    det = anomalens.create(model, **settings).setup()
    train, calib = split_holdout(ds, holdout)
    det.fit(train)
    if calib is not None:
        det.calibrate(calib, fpr=fpr)
    det.save(out)
    thr = det.threshold_
    console.print(f"saved {det.name} to {out} ({len(train)} training images; threshold {thr if thr is None else f'{thr:.4f}'})"
                  + (RANDOM_INIT_TAG if det.random_init else ""))


def register(app: typer.Typer) -> None:
    app.command()(fit)
