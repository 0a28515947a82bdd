"""`anomalens datasets download`: fetch MVTec AD / VisA (resumable, checksummed), extract, check the layout."""
from __future__ import annotations

from pathlib import Path

import typer

from .common import say, user_errors

datasets_app = typer.Typer(no_args_is_help=True, help="Download and prepare the public benchmark datasets.")


@datasets_app.command("download")
@user_errors
def download(
    name: str = typer.Argument(..., help="mvtec | visa"),
    root: Path = typer.Option(..., help="folder to download and extract into"),
    convert: bool = typer.Option(True, help="VisA: also write the 1cls split in MVTec layout (hard links) under ROOT/visa_1cls"),
):
    """Download (resuming a partial file), verify the published checksum, extract, check the layout."""
    from anomalens.data.download import prepare_dataset

    path = prepare_dataset(name, root, convert=convert, log=say)
    say(f"{name} ready at {path}")


def register(app: typer.Typer) -> None:
    app.add_typer(datasets_app, name="datasets")
