"""`anomalens models`: every model with its paper and settings (read without importing torch)."""
from __future__ import annotations

from typing import Optional

import typer

from .common import console, err_console, esc


def models(name: Optional[str] = typer.Argument(None, help="show one model's settings only")):
    """List the available models, their papers and every setting with its default (for --set key=value)."""
    from rich.table import Table

    from ..catalogue import model_catalogue

    entries = model_catalogue()
    if name is not None:
        entries = [e for e in entries if e.name == name.lower().replace("-", "_")]
        if not entries:
            err_console.print(f"[red]error:[/red] {esc(f'unknown model {name!r}; available: ' + ', '.join(e.name for e in model_catalogue()))}",
                              highlight=False, soft_wrap=True)
            raise typer.Exit(2)
    t = Table(title="anomalens models  (set any of these with --set key=value)", show_lines=True)
    t.add_column("name", style="bold")
    t.add_column("description / paper")
    t.add_column("settings (defaults)")
    for e in entries:
        settings = "\n".join(f"{k}={v!r}" for k, v in e.settings.items())
        t.add_row(e.name, f"{e.description}\n[dim]{e.paper}[/dim]", settings)
    console.print(t)


def register(app: typer.Typer) -> None:
    app.command()(models)
