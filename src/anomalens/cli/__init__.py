"""The `anomalens` command line (typer + rich); it calls the public API only. One module per command group."""
from .main import app, main

__all__ = ["app", "main"]
