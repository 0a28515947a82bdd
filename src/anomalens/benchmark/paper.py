"""Published numbers (papers and official code runs), kept as package data: `paper_numbers/paper_numbers.csv`.

One row per (method, setting, dataset, category, metric, source) in percent as printed; `lookup` returns fractions.
PRO columns are keyed by the variant the source computed: `aupro` (exact, FPR ≤ 0.3) or `pro_musc` (the
cflow-ad / MuSc / CLIP-AD lineage's 200-step sweep with a rescaled FPR axis), so each is compared like for like.
"""
from __future__ import annotations

import csv
import functools
import io
import math
from importlib import resources
from typing import Iterable, Optional

SOURCES = ("paper", "official")


@functools.lru_cache(maxsize=1)
def paper_numbers() -> dict[tuple, float]:
    """{(method, setting, dataset, category, metric, source): fraction} for every published number."""
    text = resources.files(__package__).joinpath("paper_numbers", "paper_numbers.csv").read_text()
    out = {}
    for r in csv.DictReader(io.StringIO(text)):
        key = (r["method"], r["setting"], r["dataset"], r["category"], r["metric"], r["source"])
        out[key] = float(r["value"]) / 100.0
    return out


def lookup(method: str, setting: str, dataset: str, category: str, metric: str, source: str = "paper") -> Optional[float]:
    """A published value as a fraction, or None when the source does not give it."""
    return paper_numbers().get((method, setting, dataset, category, metric, source))


def published_mean(method: str, setting: str, dataset: str, categories: Iterable[str], metric: str,
                   source: str = "paper") -> Optional[float]:
    """The mean to compare with ours over `categories`: the printed mean when the run covers every category the
    source lists, else the mean of its per-category values (None when one is missing)."""
    cats = sorted(set(categories))
    listed = {k[3] for k in paper_numbers() if k[:3] == (method, setting, dataset) and k[4] == metric and k[5] == source}
    listed.discard("mean")
    if not listed:  # the source prints a mean only (e.g. PatchCore's low-shot Table S5): whole dataset runs only
        from ..data.download import MVTEC_CATEGORIES, VISA_CATEGORIES

        listed = set({"mvtec": MVTEC_CATEGORIES, "visa": VISA_CATEGORIES}.get(dataset, ()))
    if listed and set(cats) >= listed:
        printed = lookup(method, setting, dataset, "mean", metric, source)
        if printed is not None:
            return printed
    vals = [lookup(method, setting, dataset, c, metric, source) for c in cats]
    if not vals or any(v is None for v in vals):
        return None
    return float(math.fsum(vals) / len(vals))
