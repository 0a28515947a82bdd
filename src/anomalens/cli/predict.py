"""`anomalens predict`: score images with a saved model, streamed: CSV/JSON rows as they come, overlays, resumable."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .common import (DEVICE_HELP, FORCE_HELP, RANDOM_INIT_TAG, check_device, console, err_console, esc, parse_settings,
                     require_inputs, require_model_dir, say, user_errors)


@user_errors
def predict(
    model_dir: Path = typer.Argument(..., help="a model saved by `anomalens fit`"),
    images: List[str] = typer.Argument(..., help="image files, folders or glob patterns"),
    out: Path = typer.Option(Path("predictions"), "--out", "-o", help="output folder"),
    fmt: str = typer.Option("csv", "--format", help="csv or json"),
    overlays: bool = typer.Option(True, help="write heat-map overlays"),
    setting: Optional[List[str]] = typer.Option(None, "--set", help="override a run-time setting key=value: batch_size, device, feature_dir, cache_dir, token_cache (fit-time settings need a refit)"),
    threshold: Optional[float] = typer.Option(None, help="decision threshold on the image score (overrides the calibrated one)"),
    resume: bool = typer.Option(True, help="continue an interrupted run in the same --out folder (skip images already "
                                           "written); --no-resume starts the output afresh"),
    ray: Optional[str] = typer.Option(None, "--ray", help="run on Ray Data: 'auto' (a local or the running cluster) or "
                                                          "a cluster ADDRESS; writes predictions.parquet"),
    workers: int = typer.Option(2, help="image-reading threads (or Ray model actors with --ray)"),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    force: bool = typer.Option(False, "--force", help=FORCE_HELP),
):
    """Score images with a saved model: a CSV/JSON row per image (unreadable files with the reason), plus overlays.

    Rows are written batch by batch, so a folder of any size runs in bounded memory and an interrupted run
    resumes where it stopped.
    """
    from anomalens.outputs import claim
    from anomalens.settings import check_runtime_overrides, saved_settings

    if fmt not in ("csv", "json"):
        raise ValueError(f"--format must be csv or json, got {fmt!r}")
    settings = parse_settings(setting)
    check_device(device)
    require_model_dir(model_dir)
    check_runtime_overrides(settings, saved_settings(model_dir), where="predict --set")
    require_inputs(images)
    claim(files=[out / name for name in predict_outputs(fmt, ray is not None)], dirs=[out / "overlays"] if overlays else [])
    import anomalens
    if ray is not None:
        from anomalens.deploy.ray_predict import predict_ray

        summary = predict_ray(model_dir, images, out, address=ray, num_actors=workers, device=device,
                              threshold=threshold, settings=settings, csv=fmt == "csv", resume=resume,
                              overlays_dir=out / "overlays" if overlays else None)
        det = None
    else:
        from anomalens.deploy.stream import finish_json, predict_stream, refuse_foreign_outputs

        if fmt == "json":
            refuse_foreign_outputs(out / "predictions.jsonl", [out / "predictions.json"], resume)
        det = anomalens.load(model_dir, device=device, **settings)
        if threshold is not None:
            det.threshold_ = float(threshold)
        writer = None
        if overlays:
            from anomalens.viz import OverlayWriter, overlay_root

            writer = OverlayWriter(out / "overlays", overlay_root(images),
                                   (getattr(det, "calibration_", None) or {}).get("map_scale"))
        summary = predict_stream(det, images, out, fmt="csv" if fmt == "csv" else "jsonl", resume=resume,
                                 num_workers=workers, on_batch=(lambda pred: writer(pred, det.transform)) if writer else None,
                                 overlay_path=writer.path_for if writer else None)
        if fmt == "json":
            summary.path = finish_json(summary.path, out / "predictions.json", {
                "info": det.info(), "threshold": det.threshold_, "calibration": getattr(det, "calibration_", None)})
    _report(summary, det, threshold is not None)


def predict_outputs(fmt: str, ray: bool) -> list[str]:
    """The files `predict` writes into --out (overlays aside)."""
    names = ["run.json", "predictions.csv" if fmt == "csv" else "predictions.jsonl"]
    names += [] if fmt == "csv" else ["predictions.json"]
    return names + (["predictions.parquet"] if ray else [])


def _report(summary, det, manual: bool) -> None:
    from anomalens.deploy.stream import calibration_note

    random_init = det.random_init if det is not None else summary.random_init
    n_new = summary.n_scored + summary.n_failed
    line = f"scored {summary.n_scored} images -> {esc(summary.path)}"
    line += f" ({summary.n_anomalous} anomalous)" if summary.n_anomalous is not None else " (no threshold set)"
    if summary.n_failed:
        line += f"; [red]{summary.n_failed} unreadable[/red] (reason in the error column)"
    if summary.n_resumed:
        line += f"; {summary.n_resumed} already done in an earlier run, {n_new} new"
    console.print(line + (RANDOM_INIT_TAG if random_init else ""), highlight=False, soft_wrap=True)
    say(calibration_note(det, manual) if det is not None else summary.calibration_note)
    for path, reason in summary.failures[:5]:
        err_console.print(f"[yellow]unreadable:[/yellow] {esc(path)}: {esc(reason)}", highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command()(predict)
