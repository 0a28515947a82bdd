"""Hand-written inline SVG charts (no plotting dependency, no script): line charts and grouped bars."""
from __future__ import annotations

from html import escape
from typing import Optional, Sequence

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#17becf", "#7f7f7f")


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    return [lo + (hi - lo) * i / (n - 1) for i in range(n)]


def _fmt(v: float) -> str:
    return f"{v:.2f}" if abs(v) < 100 else f"{v:.0f}"


class _Frame:
    """Plot area mapping data to pixels, with axes, ticks and labels."""

    def __init__(self, width: int, height: int, xlim: tuple, ylim: tuple, left: int = 46, bottom: int = 36, top: int = 26):
        self.w, self.h, self.left, self.bottom, self.top, self.right = width, height, left, bottom, top, 12
        self.xlim, self.ylim = xlim, ylim

    def x(self, v: float) -> float:
        lo, hi = self.xlim
        return self.left + (v - lo) / ((hi - lo) or 1.0) * (self.w - self.left - self.right)

    def y(self, v: float) -> float:
        lo, hi = self.ylim
        return self.h - self.bottom - (v - lo) / ((hi - lo) or 1.0) * (self.h - self.bottom - self.top)

    def axes(self, title: str, xlabel: str, ylabel: str, xticks: bool = True) -> list[str]:
        x0, x1, y0, y1 = self.left, self.w - self.right, self.h - self.bottom, self.top
        out = [f'<rect x="{x0}" y="{y1}" width="{x1 - x0}" height="{y0 - y1}" fill="#fff" stroke="#999"/>',
               f'<text x="{self.w / 2:.0f}" y="16" text-anchor="middle" class="t">{escape(title)}</text>',
               f'<text x="{(x0 + x1) / 2:.0f}" y="{self.h - 4}" text-anchor="middle">{escape(xlabel)}</text>',
               f'<text x="12" y="{(y0 + y1) / 2:.0f}" text-anchor="middle" transform="rotate(-90 12 {(y0 + y1) / 2:.0f})">'
               f'{escape(ylabel)}</text>']
        for v in _ticks(*self.ylim):
            out.append(f'<line x1="{x0}" x2="{x1}" y1="{self.y(v):.1f}" y2="{self.y(v):.1f}" stroke="#eee"/>'
                       f'<text x="{x0 - 4}" y="{self.y(v) + 3:.1f}" text-anchor="end">{_fmt(v)}</text>')
        if xticks:
            for v in _ticks(*self.xlim):
                out.append(f'<text x="{self.x(v):.1f}" y="{y0 + 13}" text-anchor="middle">{_fmt(v)}</text>')
        return out


def _svg(width: int, height: int, body: list[str], label: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
            f'role="img" aria-label="{escape(label)}"><style>text{{font:10px sans-serif;fill:#333}}.t{{font-weight:bold}}'
            f'</style>{"".join(body)}</svg>')


def line_chart(series: Sequence[tuple[str, Sequence[float], Sequence[float]]], title: str, xlabel: str, ylabel: str,
               xlim: Optional[tuple] = None, ylim: tuple = (0.0, 1.0), vlines: Sequence[tuple[float, str]] = (),
               diagonal: bool = False, width: int = 330, height: int = 250) -> str:
    """Polylines of (label, xs, ys); optional vertical marker lines (x, label) and a chance diagonal."""
    xs_all = [x for _, xs, _ in series for x in xs] + [v for v, _ in vlines]
    if xlim is None:
        xlim = (min(xs_all), max(xs_all)) if xs_all else (0.0, 1.0)
        if xlim[0] == xlim[1]:
            xlim = (xlim[0] - 0.5, xlim[1] + 0.5)
    f = _Frame(width, height, xlim, ylim)
    body = f.axes(title, xlabel, ylabel)
    if diagonal:
        body.append(f'<line x1="{f.x(xlim[0]):.1f}" y1="{f.y(ylim[0]):.1f}" x2="{f.x(xlim[1]):.1f}" y2="{f.y(ylim[1]):.1f}" '
                    'stroke="#bbb" stroke-dasharray="4 3"/>')
    for i, (label, xs, ys) in enumerate(series):
        c = PALETTE[i % len(PALETTE)]
        pts = " ".join(f"{f.x(x):.1f},{f.y(y):.1f}" for x, y in zip(xs, ys))
        body.append(f'<polyline points="{pts}" fill="none" stroke="{c}" stroke-width="1.6"/>')
        body.append(f'<text x="{f.left + 6}" y="{f.top + 12 + 12 * i}" style="fill:{c}">{escape(label)}</text>')
    for v, label in vlines:
        body.append(f'<line x1="{f.x(v):.1f}" x2="{f.x(v):.1f}" y1="{f.y(ylim[0]):.1f}" y2="{f.y(ylim[1]):.1f}" '
                    f'stroke="#000" stroke-dasharray="3 2"/><text x="{f.x(v) + 3:.1f}" y="{f.y(ylim[0]) - 4:.1f}" '
                    f'text-anchor="start">{escape(label)}</text>')
    return _svg(width, height, body, title)


def bar_chart(categories: Sequence[str], series: Sequence[tuple[str, Sequence[Optional[float]]]], title: str,
              ylabel: str = "", ylim: tuple = (0.0, 1.0), markers: Optional[Sequence[Optional[float]]] = None,
              marker_label: str = "paper", height: int = 260) -> str:
    """Grouped bars per category (None = no bar); optional per-category reference markers (black ticks)."""
    n, k = len(categories), max(len(series), 1)
    width = max(360, 60 + n * (14 * k + 12))
    f = _Frame(width, height, (0, n), ylim, bottom=70, top=40)
    body = f.axes(title, "", ylabel, xticks=False)
    slot = (f.x(1) - f.x(0))
    bw = (slot - 10) / k
    for ci, cat in enumerate(categories):
        x0 = f.x(ci) + 5
        for si, (_, vals) in enumerate(series):
            v = vals[ci]
            if v is None:
                continue
            v = min(max(v, ylim[0]), ylim[1])
            body.append(f'<rect x="{x0 + si * bw:.1f}" y="{f.y(v):.1f}" width="{bw - 1:.1f}" '
                        f'height="{f.y(ylim[0]) - f.y(v):.1f}" fill="{PALETTE[si % len(PALETTE)]}"/>')
        if markers is not None and markers[ci] is not None:
            body.append(f'<line x1="{x0:.1f}" x2="{x0 + slot - 10:.1f}" y1="{f.y(markers[ci]):.1f}" y2="{f.y(markers[ci]):.1f}" '
                        'stroke="#000" stroke-width="2"/>')
        cx = f.x(ci + 0.5)
        body.append(f'<text x="{cx:.1f}" y="{f.y(ylim[0]) + 10:.1f}" text-anchor="end" '
                    f'transform="rotate(-45 {cx:.1f} {f.y(ylim[0]) + 10:.1f})">{escape(cat)}</text>')
    legend = [(label, PALETTE[i % len(PALETTE)]) for i, (label, _) in enumerate(series)]
    if markers is not None and any(m is not None for m in markers):
        legend.append((f"— {marker_label}", "#000"))
    lx = f.left + 4
    for label, c in legend:
        body.append(f'<text x="{lx}" y="{f.top - 6}" style="fill:{c}">{escape(label)}</text>')
        lx += 8 + 6 * len(label)
    return _svg(width, height, body, title)
