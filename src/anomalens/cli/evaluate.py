"""`anomalens evaluate`: fit per category on the train split (unless zero-shot), evaluate on the test split.

Prompt-based models get each category's own class word (`anomalens.data.class_names`, as the benchmark) and, where
they have the setting, the dataset kind (CLIP-AD's DBSCAN preset); `--shots K` is the model's `k_shot` where it has
one (WinCLIP+). metrics.json records per category what ran.
"""
from __future__ import annotations

import csv
import inspect
import io
from pathlib import Path
from typing import List, Optional

import typer

from .common import (DEVICE_HELP, FORCE_HELP, SET_HELP, check_device, check_model_settings, console, metrics_table,
                     open_dataset, parse_settings, require_path, say, user_errors)

#: the ground-truth mask geometries of `anomalens.evaluation` (held equal by tests/test_fast_errors.py; read here
#: without importing torch)
MASK_GEOMETRIES = ("ours", "official")


def model_setting_names(model: str) -> set[str]:
    """The constructor settings of a registered model."""
    from anomalens.registry import get_entry

    return {k for k in inspect.signature(get_entry(model).cls.__init__).parameters if k != "self"}


def category_settings(model: str, dataset: str, category: str, user: dict, shots: int) -> dict:
    """Settings of one category's model: class word and dataset kind where the model takes them (unless the user set
    them), k_shot = shots where it has one, then the user's --set values."""
    from anomalens.data.class_names import class_name

    valid = model_setting_names(model)
    out: dict = {}
    if "class_name" in valid:
        out["class_name"] = class_name(model, dataset, category)
    if "dataset" in valid:
        out["dataset"] = dataset
    if "k_shot" in valid:
        out["k_shot"] = shots
    out.update(user)
    return out


@user_errors
def evaluate(
    root: Path = typer.Argument(..., help="dataset root (MVTec AD or VisA layout)"),
    model: str = typer.Option("patchcore", help="model name"),
    dataset: str = typer.Option("mvtec", help="mvtec | visa"),
    categories: Optional[List[str]] = typer.Option(None, "--category", help="categories (default: all)"),
    setting: Optional[List[str]] = typer.Option(None, "--set", help=SET_HELP),
    out: Path = typer.Option(Path("evaluation"), "--out", "-o", help="output folder for metrics.json / metrics.csv"),
    shots: int = typer.Option(0, help="few-shot: fit on K normal images drawn with --seed (0 = all; zero-shot models: "
                                      "none); the model's k_shot where it has one"),
    seed: int = typer.Option(0, help="seed of the few-shot draw"),
    mask_geometry: str = typer.Option("ours", "--mask-geometry",
                                      help="ours (masks through the model's transform) | official (MuSc's official "
                                           "code: the 0/255 mask bilinear-resized, then == 255 on MVTec AD, > 0 on "
                                           "VisA)"),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    force: bool = typer.Option(False, "--force", help=FORCE_HELP),
):
    """Fit per category on the train split (zero-shot models: only with --shots), evaluate on the test split."""
    from anomalens.outputs import claim

    if dataset not in ("mvtec", "visa"):
        raise ValueError(f"--dataset must be mvtec or visa, got {dataset!r}")
    if mask_geometry not in MASK_GEOMETRIES:
        raise ValueError(f"--mask-geometry must be one of {', '.join(MASK_GEOMETRIES)}, got {mask_geometry!r}")
    if shots < 0:
        raise ValueError(f"--shots must be >= 0, got {shots}")
    user = parse_settings(setting)
    if "k_shot" in user:
        if not isinstance(user["k_shot"], int) or user["k_shot"] < 0:
            raise ValueError(f"k_shot must be an integer >= 0, got {user['k_shot']!r}")
        if shots and user["k_shot"] != shots:
            raise ValueError(f"--shots {shots} contradicts --set k_shot={user['k_shot']}; give one of them")
        shots = user["k_shot"]
    user["device"] = device
    check_device(device)
    check_model_settings(model, user)
    require_path(root, "dataset root", folder=True)
    claim(files=[out / "metrics.json", out / "metrics.csv"])
    import anomalens
    from anomalens import metrics as _metrics
    from anomalens.data import MVTecAD, VisA
    from anomalens.io import write_json, write_text

    cats = list(categories or (MVTecAD.categories(root) if dataset == "mvtec" else VisA.categories(root)))
    rows, runs, rand = {}, {}, False
    for cat in cats:
        settings = category_settings(model, dataset, cat, user, shots)
        det = anomalens.create(model, **settings)
        run: dict = {"fit": "zero-shot", "fit_images": 0, "shots": 0, "seed": None, "shot_paths": []}
        if not det.zero_shot or shots > 0:  # zero-shot methods score the test set as it is (the papers' protocol)
            train = open_dataset(root, dataset, cat, "train")
            fit_set = train.sample(shots, seed) if shots > 0 else train
            det.fit(fit_set)
            run = {"fit": f"{shots}-shot" if shots > 0 else "train", "fit_images": len(fit_set),
                   "shots": shots, "seed": seed if shots > 0 else None, "shot_paths": list(fit_set.paths) if shots > 0 else []}
        rep = anomalens.evaluate(det, open_dataset(root, dataset, cat, "test"), mask_geometry=mask_geometry)
        params = det.get_params()
        run.update({"class_name": params.get("class_name"), "k_shot": params.get("k_shot"), "mask_geometry": mask_geometry,
                    "image_score": rep.info.get("image_score_metrics", "model"), "raw_metrics": rep.raw_metrics,
                    "settings": params, "random_init": bool(det.random_init)})
        runs[cat] = run
        rows[cat] = rep.metrics
        rand = rand or det.random_init
        say(str(rep))
    table = _metrics.table(rows)
    zero_shot = all(r["fit"] == "zero-shot" for r in runs.values())
    write_json(out / "metrics.json", {"model": model, "dataset": dataset, "settings": user,
                                      "shots": "zero-shot" if zero_shot else (shots or "all"),
                                      "seed": seed if shots > 0 else None, "mask_geometry": mask_geometry,
                                      "random_init": rand, "metrics": table, "runs": runs})
    buf = io.StringIO()
    keys = [k for k in _metrics.ALL_KEYS if any(k in r for r in table.values())]
    w = csv.writer(buf)
    w.writerow(["category", *keys, "random_init", "mask_geometry"])
    for cat, r in table.items():
        w.writerow([cat, *[r.get(k, float("nan")) for k in keys], rand, mask_geometry])
    write_text(out / "metrics.csv", buf.getvalue())
    console.print(metrics_table(f"{model} on {dataset}", table, rand))


def register(app: typer.Typer) -> None:
    app.command()(evaluate)
