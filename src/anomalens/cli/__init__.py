"""The `anomalens` command line (typer + rich); it calls the public API only."""
from .app import app, main

__all__ = ["app", "main"]
