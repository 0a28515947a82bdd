"""The typer app: one module per command group, each adding its commands through `register(app)`."""
from __future__ import annotations

import importlib
import typer

#: command modules, in the order their commands appear in --help
COMMAND_MODULES = ("demo", "fit", "predict", "evaluate", "export", "models")

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Industrial visual anomaly detection.")


def _version(value: bool) -> None:
    if value:
        from .. import __version__

        typer.echo(f"anomalens {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="print the version and exit"),
) -> None:
    """Industrial visual anomaly detection: PatchCore, WinCLIP, MuSc, CLIP-AD and more behind one CLI."""


for _name in COMMAND_MODULES:
    importlib.import_module(f".{_name}", __package__).register(app)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
