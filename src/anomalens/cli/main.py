"""The typer app: one module per command group, each adding its commands through `register(app)`."""
from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

import typer

#: command modules listed first in --help; every other module of this package with a `register(app)` follows,
#: alphabetically (a new command group is a new module: no list to edit)
FIRST = ("demo", "fit", "predict", "evaluate", "models")

def _no_flag_metavar() -> None:
    """typer's rich help shows a `<bool>` type next to every flag (`--version <bool>`), though a flag takes no value:
    show nothing there instead."""
    try:
        from typer.core import TyperOption
    except ImportError:  # pragma: no cover - another typer layout: its own help stays
        return
    original = getattr(TyperOption, "display_type_rich", None)
    if original is None or getattr(original, "_anomalens", False):
        return

    def display_type_rich(self, ctx):
        if getattr(self, "is_flag", False) and self.metavar is None:
            return None
        return original(self, ctx)

    display_type_rich._anomalens = True
    TyperOption.display_type_rich = display_type_rich


_no_flag_metavar()
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


def command_modules() -> list[str]:
    """Names of the command modules in --help order."""
    names = [m.name for m in pkgutil.iter_modules([str(Path(__file__).parent)]) if m.name not in ("main", "common")]
    return [n for n in FIRST if n in names] + sorted(n for n in names if n not in FIRST)


for _name in command_modules():
    _module = importlib.import_module(f".{_name}", __package__)
    if hasattr(_module, "register"):
        _module.register(app)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
