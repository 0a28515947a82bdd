"""`anomalens benchmark`: every method in its paper setting on every category, next to the papers' numbers."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .common import DEVICE_HELP, FORCE_HELP, check_choice, check_device, parse_settings, require_path, say, user_errors


@user_errors
def benchmark(
    dataset: str = typer.Option(..., help="mvtec | visa"),
    root: Path = typer.Option(..., help="dataset root (MVTec AD layout, or VisA with split_csv/1cls.csv)"),
    methods: str = typer.Option("patchcore", help="comma-separated: patchcore, winclip, musc, clipad"),
    categories: Optional[List[str]] = typer.Option(None, "--category", help="category (repeatable; default: all)"),
    shots: Optional[str] = typer.Option(None, help="few-shot k values of methods with a few-shot mode (winclip), e.g. 0,1,2,4"),
    seeds: str = typer.Option("0", help="seeds of the few-shot draws, e.g. 0,1,2,3,4 (the papers use 5)"),
    setting: Optional[List[str]] = typer.Option(None, "--set", help="key=value for every method that has the key, "
                                                "or method.key=value for one (repeatable)"),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    out: Path = typer.Option(..., "--out", "-o", help="run folder (re-run the same command to resume)"),
    force: bool = typer.Option(False, "--force", help=FORCE_HELP),
):
    """Run the methods in their paper settings; per-category JSON, summary.csv / summary.md; resumable."""
    from anomalens.benchmark import run_benchmark
    from anomalens.benchmark.runner import parse_int_list
    from anomalens.outputs import claim

    check_choice(dataset, ("mvtec", "visa"), "--dataset")
    check_device(device)
    names = [m.strip() for m in methods.split(",") if m.strip()]
    seed_list = parse_int_list(seeds, "--seeds") or [0]
    shot_list = parse_int_list(shots, "--shots")
    require_path(root, "dataset root", folder=True)
    claim(files=[out / "manifest.json", out / "summary.csv", out / "summary.md"], dirs=[out / "results"])
    path = run_benchmark(dataset, root, names, out, categories, shot_list, seed_list,
                         parse_settings(setting), device, log=say)
    say(f"summary: {path} and {path.with_suffix('.md')}; HTML: anomalens report {out} -o report.html")


def register(app: typer.Typer) -> None:
    app.command()(benchmark)
