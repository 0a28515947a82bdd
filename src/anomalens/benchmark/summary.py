"""Summary of a run: per setting, one row per category plus the mean, ours next to the published numbers.

Seeds of a few-shot setting are pooled (mean, and std when there are several). Columns per metric: ours, paper,
paper difference (ours − paper), official code, official difference. Values are fractions in the CSV and percent
in the Markdown.
"""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Optional

import numpy as np

from ..io import write_text
from ..metrics import ALL_KEYS
from .paper import SOURCES, lookup, published_mean
from .runner import EXTRA_KEYS, iter_categories, load_results

SHORT = {"image_auroc": "I-AUROC", "image_ap": "I-AP", "image_f1max": "I-F1max", "pixel_auroc": "P-AUROC",
         "pixel_ap": "P-AP", "pixel_f1max": "P-F1max", "aupro": "AUPRO", "pro_musc": "PRO-200step"}


def _mean(vals: list) -> Optional[float]:
    vals = [float(v) for v in vals if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return float(np.mean(vals)) if vals else None


def metric_keys(results: list[dict]) -> list[str]:
    """The standard suite (always, exact AUPRO included), then the named PRO variants and raw-score extras present."""
    extra = []
    for r in results:
        for k in r.get("extra_metrics", {}):
            if k not in extra:
                extra.append(k)
    ordered = [k for k in EXTRA_KEYS if k in extra] + [k for k in extra if k not in EXTRA_KEYS]
    return list(ALL_KEYS) + ordered


def _values(rec: dict) -> dict:
    return {**rec.get("metrics", {}), **rec.get("extra_metrics", {})}


def paper_backbone(rec: dict) -> Optional[str]:
    """The backbone of the paper run this record is compared with: its method preset's setting for the category, else
    the model's default (read from source, no torch); None when neither names one."""
    from ..catalogue import model_catalogue
    from .presets import PRESETS

    preset = PRESETS.get(rec.get("method", ""))
    if preset is not None:
        try:
            b = preset.settings(rec["dataset"], rec["category"], int(rec.get("shots", 0) or 0)).get("backbone")
        except Exception:  # noqa: BLE001 - a preset that cannot say: fall back to the model default
            b = None
        if b is not None:
            return str(b)
    defaults = {e.name: e.settings for e in model_catalogue()}.get(rec.get("model", rec.get("method", "")), {})
    return None if defaults.get("backbone") is None else str(defaults["backbone"])


def backbone_note(t: dict) -> str:
    """'' when the run used the paper's backbone, else one sentence saying what ran instead."""
    if t.get("comparable", True):
        return ""
    return (f"backbone {t['backbone']} (the paper: {t['paper_backbone']}): the paper columns are not comparable "
            "with these numbers")


def summary_table(results: list[dict]) -> list[dict]:
    """One entry per setting: {setting, method, dataset, paper_setting, seeds, random_init, keys, rows}; each row
    {category, n, ours{k}, std{k}, paper{k}, official{k}} with a final 'mean' row."""
    keys = metric_keys(results)
    settings: dict[str, list[dict]] = {}
    for r in results:
        settings.setdefault(r["setting"], []).append(r)
    out = []
    for setting, recs in settings.items():
        first = recs[0]
        method, dataset, pset = first["method"], first["dataset"], first["paper_setting"]
        published = first.get("model", method)  # published numbers are keyed by model (one paper per model)
        rows = []
        cats = iter_categories(recs)
        for cat in cats:
            group = [r for r in recs if r["category"] == cat]
            vals = [_values(r) for r in group]
            ours = {k: _mean([v.get(k) for v in vals]) for k in keys}
            std = {k: (float(np.std([v[k] for v in vals if v.get(k) is not None]))
                       if sum(v.get(k) is not None for v in vals) > 1 else None) for k in keys}
            refs = {s: {k: lookup(published, pset, dataset, cat, k, s) for k in keys} for s in SOURCES}
            rows.append({"category": cat, "n": len(group), "ours": ours, "std": std, **refs})
        mean = {"category": "mean", "n": len(cats), "ours": {k: _mean([r["ours"][k] for r in rows]) for k in keys},
                "std": {k: None for k in keys}}
        for s in SOURCES:
            mean[s] = {k: published_mean(published, pset, dataset, cats, k, s) for k in keys}
        rows.append(mean)
        ran = sorted({str(r.get("settings", {}).get("backbone")) for r in recs if r.get("settings", {}).get("backbone")})
        paper = sorted({b for b in (paper_backbone(r) for r in recs) if b})
        comparable = not ran or not paper or ran == paper
        out.append({"setting": setting, "method": method, "dataset": dataset, "paper_setting": pset,
                    "seeds": sorted({r["seed"] for r in recs}), "random_init": any(r["random_init"] for r in recs),
                    "keys": keys, "rows": rows, "backbone": ", ".join(ran) or None,
                    "paper_backbone": ", ".join(paper) or None, "comparable": comparable})
    return out


def _diff(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return None if a is None or b is None else a - b


def summary_csv(table: list[dict]) -> str:
    """Wide CSV: one line per (setting, category), five columns per metric."""
    keys = []
    for t in table:
        keys += [k for k in t["keys"] if k not in keys]
    cols = ["setting", "method", "dataset", "category", "n_runs", "random_init", "backbone", "paper_backbone",
            "comparable_with_paper"]
    for k in keys:
        cols += [k, f"{k}_std", f"{k}_paper", f"{k}_paper_diff", f"{k}_official", f"{k}_official_diff"]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(cols)
    fmt = lambda v: "" if v is None else f"{v:.6f}"
    for t in table:
        for row in t["rows"]:
            comparable = t.get("comparable", True)
            line = [t["setting"], t["method"], t["dataset"], row["category"], row["n"], t["random_init"],
                    t.get("backbone") or "", t.get("paper_backbone") or "", comparable]
            for k in keys:
                o = row["ours"].get(k)
                p, f = row["paper"].get(k), row["official"].get(k)
                # a difference across backbones means nothing: left empty (comparable_with_paper says why)
                line += [fmt(o), fmt(row["std"].get(k)), fmt(p), fmt(_diff(o, p) if comparable else None), fmt(f),
                         fmt(_diff(o, f) if comparable else None)]
            w.writerow(line)
    return buf.getvalue()


def pct(v: Optional[float], signed: bool = False) -> str:
    """A fraction as percent with one decimal ('–' when absent)."""
    if v is None:
        return "–"
    return f"{100 * v:+.1f}" if signed else f"{100 * v:.1f}"


def cell(row: dict, k: str, comparable: bool = True) -> str:
    """'ours (paper, Δ)' in percent; official code in brackets when given; under another backbone than the paper's
    the published numbers carry 'not comparable' instead of a difference."""
    o, p, f = row["ours"].get(k), row["paper"].get(k), row["official"].get(k)
    s = pct(o)
    if row["std"].get(k) is not None:
        s += f" ±{100 * row['std'][k]:.1f}"
    refs = []
    if p is not None:
        refs.append(f"paper {pct(p)}, {pct(_diff(o, p), True) if comparable else 'not comparable'}")
    if f is not None:
        refs.append(f"official {pct(f)}, {pct(_diff(o, f), True) if comparable else 'not comparable'}")
    return s + (f" ({'; '.join(refs)})" if refs else "")


def summary_markdown(table: list[dict]) -> str:
    """One Markdown table per setting (percent; differences are ours − published)."""
    lines = ["# Benchmark summary", "",
             "Percent. In brackets: the published number and ours − published. AUPRO is the exact area up to FPR 0.3; "
             "PRO-200step is the cflow-ad / MuSc / CLIP-AD lineage's variant (200 thresholds, rescaled FPR axis), "
             "the one those papers print.", ""]
    for t in table:
        keys = [k for k in t["keys"] if any(r["ours"].get(k) is not None for r in t["rows"])]
        tag = " — **random-init backbone: not comparable with the papers**" if t["random_init"] else ""
        if backbone_note(t):
            tag += f" — **{backbone_note(t)}**"
        seeds = f", seeds {', '.join(map(str, t['seeds']))}" if len(t["seeds"]) > 1 else ""
        lines += [f"## {t['setting']} on {t['dataset']} (paper setting `{t['paper_setting']}`{seeds}){tag}", "",
                  "| category | " + " | ".join(SHORT.get(k, k) for k in keys) + " |",
                  "|---|" + "---|" * len(keys)]
        for row in t["rows"]:
            name = f"**{row['category']}**" if row["category"] == "mean" else row["category"]
            lines.append(f"| {name} | " + " | ".join(cell(row, k, t.get("comparable", True)) for k in keys) + " |")
        lines.append("")
    return "\n".join(lines)


def write_summary(out: Path) -> Path:
    """Write summary.csv and summary.md of a run folder; returns the CSV path."""
    table = summary_table(load_results(Path(out)))
    write_text(Path(out) / "summary.md", summary_markdown(table))
    return write_text(Path(out) / "summary.csv", summary_csv(table))
