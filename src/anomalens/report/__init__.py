"""Reports a person can read in a browser: one self-contained HTML file (inline SVG / PNG, no script, no network)
from a benchmark run or a `fit` / `evaluate` / `demo` / `predict` output folder.

    from anomalens.report import write_report
    write_report("runs/mvtec", "report.html")
"""
from __future__ import annotations

from pathlib import Path

from ..io import write_text
from .page import RENDERERS
from .sources import load_source


def render_report(run_dir) -> str:
    """The HTML text of the report of `run_dir`."""
    src = load_source(run_dir)
    return RENDERERS[src["kind"]](src)


def write_report(run_dir, out) -> Path:
    """Write the report of `run_dir` to `out` atomically; returns the path."""
    return write_text(Path(out), render_report(run_dir))


__all__ = ["render_report", "write_report", "load_source"]
