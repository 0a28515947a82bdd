"""`anomalens fit`: fit a detector on normal images, calibrate its threshold on held-out normals, save it."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .common import (DEVICE_HELP, RANDOM_INIT_TAG, SET_HELP, calibrate_with_warnings, check_choice, check_device,
                     check_model_settings, console, esc, open_dataset, parse_settings, require_path,
                     split_holdout, user_errors, warn)


@user_errors
def fit(
    data: Path = typer.Argument(..., help="folder of normal images, or a dataset root with --dataset/--category"),
    out: Path = typer.Option(..., "--out", "-o", help="where to save the model (a directory)"),
    model: str = typer.Option("patchcore", help="model name (see `anomalens models`)"),
    dataset: str = typer.Option("folder", help="folder | mvtec | visa"),
    category: Optional[str] = typer.Option(None, help="category, for mvtec / visa"),
    setting: Optional[List[str]] = typer.Option(None, "--set", help=SET_HELP),
    holdout: float = typer.Option(0.2, help="fraction of normal images held out to calibrate the threshold, 0 <= h < 1 (0 = none)"),
    fpr: float = typer.Option(0.01, help="false-positive rate on held-out normals that sets the threshold, 0 < fpr < 1"),
    force: bool = typer.Option(False, "--force", help="replace a model already saved at --out"),
    strict: bool = typer.Option(False, "--strict", help="stop on the first unreadable image (default: skip it, name it, "
                                                        "and record it with the model)"),
    device: str = typer.Option("auto", help=DEVICE_HELP),
):
    """Fit a detector on normal images, calibrate its threshold on held-out normals, save it."""
    from anomalens.outputs import check_save_target

    if not 0.0 <= holdout < 1.0:
        raise ValueError(f"--holdout must be in [0, 1), got {holdout}")
    if not 0.0 < fpr < 1.0:
        raise ValueError(f"--fpr must be in (0, 1), got {fpr}")
    settings = parse_settings(setting) | {"device": device}
    check_device(device)
    check_model_settings(model, settings)
    check_choice(dataset, ("folder", "mvtec", "visa"), "--dataset")
    if dataset != "folder" and category is None:
        raise ValueError(f"--category is required for --dataset {dataset}")
    require_path(data, "normal image folder" if dataset == "folder" else "dataset root", folder=True)
    if dataset == "folder":
        from anomalens.data.image_io import is_image_file

        if not any(is_image_file(p) and not p.name.startswith(".") for p in data.iterdir() if p.is_file()):
            raise ValueError(f"no images found in normal image folder {data}")
    check_save_target(out, overwrite=force)  # before any work: never fit for minutes, then refuse to save
    import anomalens

    det = anomalens.create(model, **settings)
    ds = open_dataset(data, dataset, category, "train")
    det.setup()
    ds, skipped = readable_subset(ds, det.transform, strict)
    if skipped:
        first = "; ".join(f"{Path(p).name} ({reason.split(': ', 1)[-1]})" for p, reason in skipped[:3])
        warn(f"skipped {len(skipped)} unreadable image(s) of {len(skipped) + len(ds)} in {data}: {first}"
             + (f"; {len(skipped) - 3} more" if len(skipped) > 3 else "") + " (recorded in the model; --strict stops instead)")
    det.skipped_ = [{"path": p, "reason": reason} for p, reason in skipped]
    train, calib = split_holdout(ds, holdout)
    if holdout > 0 and calib is None:
        warn(f"{len(ds)} images leave fewer than 2 to hold out at --holdout {holdout:g}: no threshold calibrated "
             "(add normal images or raise --holdout)")
    det.fit(train)
    if calib is not None:
        calibrate_with_warnings(det, calib, fpr, context=str(data) + (f" ({category})" if category else ""))
    det.save(out, overwrite=force)
    thr, cal = det.threshold_, getattr(det, "calibration_", None)
    calib_txt = (f"threshold {thr:.4f} from {cal['n_images']} held-out normals, empirical FPR {cal['fpr_empirical']:.3g}"
                 if thr is not None and cal else "no threshold")
    console.print(esc(f"saved {det.name} to {out} ({len(train)} training images; {calib_txt})")
                  + (RANDOM_INIT_TAG if det.random_init else ""), highlight=False, soft_wrap=True)


def readable_subset(ds, transform, strict: bool = False, workers: int = 4):
    """(the images of `ds` that load through `transform`, [(path, reason)] of those that do not). None readable, or
    any unreadable with `strict`: a DataError saying so (one line, naming the first file and its reason)."""
    from concurrent.futures import ThreadPoolExecutor

    from anomalens.deploy.stream import load_for_model
    from anomalens.errors import DataError

    paths = list(ds.paths)
    with ThreadPoolExecutor(workers) as pool:
        errors = list(pool.map(lambda p: load_for_model(p, transform)[1], paths))
    bad = [(p, e) for p, e in zip(paths, errors) if e is not None]
    if bad and strict:
        raise DataError(f"unreadable training image {bad[0][0]}: {bad[0][1]} (without --strict it is skipped)")
    if len(bad) == len(paths):
        raise DataError(f"none of the {len(paths)} files in {ds.source} can be read as an image "
                        f"(first: {Path(bad[0][0]).name}: {bad[0][1]})")
    if not bad:
        return ds, []
    return ds.subset([i for i, e in enumerate(errors) if e is None]), bad


def register(app: typer.Typer) -> None:
    app.command()(fit)
