"""One self-contained HTML page: inline CSS, inline SVG charts, inline base64 PNG thumbnails; no script, no network."""
from __future__ import annotations

import base64
import io
from html import escape
from pathlib import Path
from typing import Optional

import numpy as np

from ..benchmark.summary import SHORT, backbone_note, cell, pct, summary_table
from .svg import bar_chart, line_chart

CSS = """body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;max-width:1400px}
table{border-collapse:collapse;margin:8px 0 18px}td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}tr.mean td{font-weight:bold;background:#fafafa}
.warn{background:#fff3cd;border:1px solid #e0c060;padding:6px 10px}.row{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start}
figure{margin:0;font-size:12px}figure img{display:block;border:1px solid #ccc}.muted{color:#666;font-size:12px}
h3{margin-top:26px;border-top:1px solid #ddd;padding-top:10px}"""

BAR_KEYS = ("image_auroc", "pixel_auroc", "aupro")
MAX_OVERLAYS = 40


def png_data_uri(path: Path, max_height: int = 160) -> Optional[str]:
    """An image file as a compact data: URI (downscaled to max_height, JPEG q85: photos of parts), or None."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if im.height > max_height:
                im = im.resize((max(1, round(im.width * max_height / im.height)), max_height), Image.BILINEAR)
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=85)
    except (OSError, ValueError):
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def _page(title: str, body: list[str]) -> str:
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
            f'<style>{CSS}</style></head><body><h1>{escape(title)}</h1>{"".join(body)}</body></html>\n')


def _table(header: list[str], rows: list[list[str]], mean_last: bool = False) -> str:
    out = ["<table><tr>" + "".join(f"<th>{escape(h)}</th>" for h in header) + "</tr>"]
    for i, r in enumerate(rows):
        cls = ' class="mean"' if mean_last and i == len(rows) - 1 else ""
        out.append(f"<tr{cls}>" + "".join(f"<td>{escape(str(c))}</td>" for c in r) + "</tr>")
    return "".join(out) + "</table>"


def _figure(uri: Optional[str], caption: str) -> str:
    img = f'<img src="{uri}" alt="{escape(caption)}">' if uri else ""
    return f"<figure>{img}<figcaption>{escape(caption)}</figcaption></figure>"


def _random_init_note(flag: bool) -> str:
    return ('<p class="warn">Random-init backbone: these numbers show the pipeline works; they are not comparable '
            "with the papers.</p>") if flag else ""


# ------------------------------------------------------------------------------------------------ threshold
def share_above(values: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Fraction of `values` strictly above each threshold (one sort, O(n log n))."""
    v = np.sort(np.asarray(values, dtype=np.float64))
    return 1.0 - np.searchsorted(v, thresholds, side="right") / max(len(v), 1)


def threshold_curve(images: list[dict], calibrated: Optional[float]) -> tuple[str, str]:
    """SVG of FPR (normal images) and FNR (anomalous images) against the threshold, and the error-rate line."""
    scores = np.array([i["score"] for i in images], dtype=np.float64)
    labels = np.array([i["label"] for i in images])
    normal, anomalous = scores[labels == 0], scores[labels == 1]
    if normal.size == 0:
        return "", "no normal test images: no threshold curve"
    t = np.unique(scores)
    series = [("FPR (normal images)", t, share_above(normal, t))]
    if anomalous.size:
        series.append(("FNR (anomalous images)", t, 1.0 - share_above(anomalous, t)))
    if calibrated is not None:
        thr, name = float(calibrated), "calibrated threshold"
    else:
        thr, name = float(np.quantile(normal, 0.99, method="higher")), "1 % FPR on test normals (no calibrated threshold)"
    f_at = float((normal > thr).mean())
    n_at = float((anomalous <= thr).mean()) if anomalous.size else float("nan")
    text = f"{name}: {thr:.4g} → test FPR {100 * f_at:.1f} %, FNR {100 * n_at:.1f} %"
    svg = line_chart(series, "threshold curve", "threshold (image score)", "rate", vlines=[(thr, "thr")])
    return svg, text


# ------------------------------------------------------------------------------------------------ benchmark
def _summary_section(table: list[dict]) -> list[str]:
    out = ["<h2>Summary: ours vs published</h2>",
           '<p class="muted">Percent. In brackets: the published number (paper / official code) and ours − published. '
           "AUPRO = exact area up to FPR 0.3; PRO-200step = the 200-threshold variant with a rescaled FPR axis that the "
           "MuSc / CLIP-AD papers print.</p>"]
    for t in table:
        keys = [k for k in t["keys"] if any(r["ours"].get(k) is not None for r in t["rows"])]
        seeds = f", seeds {', '.join(map(str, t['seeds']))}" if len(t["seeds"]) > 1 else ""
        out.append(f"<h3>{escape(t['setting'])} on {escape(t['dataset'])} "
                   f"<span class=\"muted\">(paper setting {escape(t['paper_setting'])}{escape(seeds)})</span></h3>")
        out.append(_random_init_note(t["random_init"]))
        if backbone_note(t):
            out.append(f'<p class="warn">{escape(backbone_note(t)[0].upper() + backbone_note(t)[1:])}.</p>')
        out.append(_table(["category", *[SHORT.get(k, k) for k in keys]],
                          [[r["category"], *[cell(r, k, t.get("comparable", True)) for k in keys]] for r in t["rows"]],
                          mean_last=True))
        cats = [r for r in t["rows"] if r["category"] != "mean"]
        out.append(bar_chart([r["category"] for r in cats],
                             [(SHORT[k], [r["ours"].get(k) for r in cats]) for k in BAR_KEYS],
                             f"{t['setting']}: per category", "score",
                             markers=[r["paper"].get("image_auroc") for r in cats], marker_label="paper I-AUROC"))
    return out


def _case_figures(run_dir: Path, rec: dict) -> list[str]:
    out = []
    for kind, title in (("false_positives", "worst false positives (normal, highest scores)"),
                        ("false_negatives", "worst false negatives (anomalous, lowest scores)")):
        cases = rec.get("worst", {}).get(kind, [])
        if not cases:
            continue
        figs = []
        for c in cases:
            uri = png_data_uri(run_dir / "results" / rec["run"] / c["thumbnail"]) if c.get("thumbnail") else None
            figs.append(_figure(uri, f"{Path(c['path']).parent.name}/{Path(c['path']).name} score {c['score']:.4g}"))
        out.append(f"<p><b>{escape(title)}</b></p><div class=\"row\">{''.join(figs)}</div>")
    return out


def _record_section(run_dir: Path, rec: dict) -> list[str]:
    curves = rec.get("curves", {})
    roc = [(label, *curves[key]) for key, label in (("image_roc", "image"), ("pixel_roc", "pixel")) if curves.get(key)]
    charts = []
    if roc:
        charts.append(line_chart(roc, "ROC", "false-positive rate", "true-positive rate", xlim=(0, 1), diagonal=True))
    if curves.get("pro"):
        charts.append(line_chart([("PRO", *curves["pro"])], "PRO curve (FPR ≤ 0.3)", "false-positive rate", "PRO",
                                 xlim=(0, 0.3)))
    svg, text = threshold_curve(rec.get("images", []), rec.get("threshold"))
    charts.append(svg)
    shots = f", {rec['shots']}-shot seed {rec['seed']}" if rec.get("shots") else ""
    return [f"<h3>{escape(rec['run'])} / {escape(rec['category'])}</h3>",
            f"<p class=\"muted\">{rec['n_images']} test images ({rec['n_anomalous']} anomalous){escape(shots)}; "
            f"fit {rec['seconds']['fit']:.1f} s, predict {rec['seconds']['predict']:.1f} s on {escape(rec['device'])}. "
            f"{escape(text)}</p>", f'<div class="row">{"".join(charts)}</div>', *_case_figures(run_dir, rec)]


def render_benchmark(src: dict) -> str:
    m, results = src["manifest"], src["results"]
    v = m.get("versions", {})
    body = [f"<p>Dataset <b>{escape(m.get('dataset', '?'))}</b> at {escape(m.get('root', '?'))}; methods "
            f"{escape(', '.join(m.get('methods', [])))}; device {escape(m.get('device', '?'))}; seeds "
            f"{escape(', '.join(map(str, m.get('seeds', []))))}; {len(results)} finished (run, category) results.</p>",
            f"<p class=\"muted\">{escape(', '.join(f'{k} {val}' for k, val in v.items()))}; created "
            f"{escape(m.get('created', '?'))}, updated {escape(m.get('updated', '?'))}</p>"]
    body += _summary_section(summary_table(results))
    body.append("<h2>Curves, threshold and worst cases per category</h2>")
    for rec in results:
        body += _record_section(src["path"], rec)
    return _page(f"anomalens benchmark: {m.get('dataset', '')}", body)


# ------------------------------------------------------------------------------------------------ other folders
def render_evaluate(src: dict) -> str:
    from ..metrics import ALL_KEYS, mean_row

    table = src["table"]
    keys = [k for k in ALL_KEYS if any(k in r for r in table.values())]
    rows = [[c, *[pct(r.get(k)) for k in keys]] for c, r in table.items()]
    mean = mean_row(table)
    rows.append(["mean", *[pct(mean.get(k)) for k in keys]])
    cats = list(table)
    body = [f"<p>Model <b>{escape(src['model'])}</b>; settings {escape(str(src['settings']))}</p>",
            _random_init_note(src["random_init"]), "<h2>Metrics (percent)</h2>",
            _table(["category", *[SHORT.get(k, k) for k in keys]], rows, mean_last=True),
            bar_chart(cats, [(SHORT[k], [table[c].get(k) for c in cats]) for k in BAR_KEYS if k in keys], "per category", "score")]
    if src["thresholds"]:
        body.append(_table(["category", "calibrated threshold"],
                           [[c, "–" if t is None else f"{t:.4g}"] for c, t in src["thresholds"].items()]))
    if src["overlays"]:
        body.append(f"<h2>Overlays</h2><p class=\"muted\">first {min(len(src['overlays']), MAX_OVERLAYS)} of "
                    f"{len(src['overlays'])}</p><div class=\"row\">")
        body += [_figure(png_data_uri(p), f"{p.parent.name}/{p.name}") for p in src["overlays"][:MAX_OVERLAYS]]
        body.append("</div>")
    return _page(f"anomalens evaluation: {src['model']}", body)


def render_predict(src: dict) -> str:
    preds = sorted(src["predictions"], key=lambda p: -p["score"])
    scores = np.array([p["score"] for p in preds])
    t = np.unique(scores)
    flagged = share_above(scores, t)
    thr = src["threshold"]
    body = [_random_init_note(src["random_init"]),
            f"<p>{len(preds)} images; threshold {'not set' if thr is None else f'{thr:.4g}'}"
            + ("" if thr is None else f"; {int((scores > thr).sum())} flagged anomalous")
            + (f"; {len(src.get('unreadable', []))} unreadable, not scored: "
               + escape(", ".join(Path(p).name for p, _ in src["unreadable"][:5]))
               + (" ..." if len(src["unreadable"]) > 5 else "") if src.get("unreadable") else "") + "</p>",
            line_chart([("share of images above threshold", t, flagged)], "threshold curve", "threshold (image score)",
                       "share flagged", vlines=[(thr, "thr")] if thr is not None else ()),
            "<h2>Scores (highest first)</h2>",
            _table(["image", "score", "anomalous"],
                   [[p["path"], f"{p['score']:.4g}", "–" if p["anomalous"] is None else str(p["anomalous"])] for p in preds])]
    if src["overlays"]:
        by_name = {p.name: p for p in src["overlays"]}
        picks = []
        for p in preds:  # each row names its overlay (older runs: <parent>__<stem>.png)
            key = Path(p["overlay"]).name if p.get("overlay") else "__".join(Path(p["path"]).parts[-2:]).rsplit(".", 1)[0] + ".png"
            if key in by_name:
                picks.append((by_name[key], p["score"]))
        picks = picks[:MAX_OVERLAYS] or [(o, None) for o in src["overlays"][:MAX_OVERLAYS]]
        body.append("<h2>Overlays (highest scores first)</h2><div class=\"row\">")
        body += [_figure(png_data_uri(o), o.name + ("" if s is None else f" score {s:.4g}")) for o, s in picks]
        body.append("</div>")
    return _page("anomalens predictions", body)


def render_fit(src: dict) -> str:
    c = src["config"]
    rows = [[k, str(v)] for k, v in c.get("settings", {}).items()]
    cal = c.get("calibration") or {}
    body = [_random_init_note(bool(c.get("random_init"))),
            f"<p>Model <b>{escape(str(c.get('model')))}</b>, anomalens {escape(str(c.get('anomalens_version')))}; threshold "
            f"{escape(str(c.get('threshold')))}"
            + (f" (calibrated at FPR {cal.get('fpr')} on {cal.get('n_images')} held-out normal images)" if cal else "")
            + "</p>", "<h2>Settings</h2>", _table(["setting", "value"], rows)]
    return _page(f"anomalens model: {c.get('model')}", body)


RENDERERS = {"benchmark": render_benchmark, "evaluate": render_evaluate, "predict": render_predict, "fit": render_fit}
