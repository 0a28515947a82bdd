"""`anomalens report`: one self-contained HTML page of a benchmark run or a fit / evaluate / predict folder."""
from __future__ import annotations

from pathlib import Path

import typer

from .common import FORCE_HELP, say, user_errors


@user_errors
def report(
    run_dir: Path = typer.Argument(..., help="a benchmark run folder, or a fit / evaluate / predict output folder"),
    out: Path = typer.Option(Path("report.html"), "--out", "-o", help="the HTML file to write"),
    force: bool = typer.Option(False, "--force", help=FORCE_HELP),
):
    """Write one self-contained HTML report (inline SVG and PNG, no network needed)."""
    from anomalens.outputs import claim
    from anomalens.report import write_report

    claim(files=[out])

    path = write_report(run_dir, out)
    say(f"report: {path}")


def register(app: typer.Typer) -> None:
    app.command()(report)
