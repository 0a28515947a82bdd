"""`anomalens evaluate`: fit per category on the train split (unless zero-shot), evaluate on the test split."""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import List, Optional

import typer

from .common import DEVICE_HELP, SET_HELP, console, metrics_table, open_dataset, parse_settings, user_errors


@user_errors
def evaluate(
    root: Path = typer.Argument(..., help="dataset root (MVTec AD or VisA layout)"),
    model: str = typer.Option("patchcore", help="model name"),
    dataset: str = typer.Option("mvtec", help="mvtec | visa"),
    categories: Optional[List[str]] = typer.Option(None, "--category", help="categories (default: all)"),
    setting: Optional[List[str]] = typer.Option(None, "--set", help=SET_HELP),
    out: Path = typer.Option(Path("evaluation"), "--out", "-o", help="output folder for metrics.json / metrics.csv"),
    shots: int = typer.Option(0, help="few-shot: fit on K normal images drawn with --seed (0 = all)"),
    seed: int = typer.Option(0, help="seed of the few-shot draw"),
    device: str = typer.Option("auto", help=DEVICE_HELP),
):
    """Fit per category on the train split (zero-shot models: only with --shots), evaluate on the test split."""
    import anomalens
    from anomalens import metrics as _metrics
    from anomalens.data import MVTecAD, VisA
    from anomalens.io import write_json, write_text

    if dataset not in ("mvtec", "visa"):
        raise ValueError(f"--dataset must be mvtec or visa, got {dataset!r}")
    cats = list(categories or (MVTecAD.categories(root) if dataset == "mvtec" else VisA.categories(root)))
    settings = parse_settings(setting) | {"device": device}
    rows, rand = {}, False
    for cat in cats:
        det = anomalens.create(model, **settings)
        if not det.zero_shot or shots > 0:  # zero-shot methods score the test set as it is (the papers' protocol)
            train = open_dataset(root, dataset, cat, "train")
            det.fit(train.sample(shots, seed) if shots > 0 else train)
        rep = anomalens.evaluate(det, open_dataset(root, dataset, cat, "test"))
        rows[cat] = rep.metrics
        rand = rand or det.random_init
        console.print(str(rep))
    table = _metrics.table(rows)
    write_json(out / "metrics.json", {"model": model, "settings": settings, "shots": shots or "all", "seed": seed,
                                      "random_init": rand, "metrics": table})
    buf = io.StringIO()
    keys = [k for k in _metrics.ALL_KEYS if any(k in r for r in table.values())]
    w = csv.writer(buf)
    w.writerow(["category", *keys, "random_init"])
    for cat, r in table.items():
        w.writerow([cat, *[r.get(k, float("nan")) for k in keys], rand])
    write_text(out / "metrics.csv", buf.getvalue())
    console.print(metrics_table(f"{model} on {dataset}", table, rand))


def register(app: typer.Typer) -> None:
    app.command()(evaluate)
