"""What a report can be made from: a benchmark run, or a `fit` / `evaluate` / `demo` / `predict` output folder."""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from ..errors import DataError


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path} is unreadable or half-written ({exc.__class__.__name__}: {exc})") from exc


def load_source(run_dir) -> dict:
    """{kind: benchmark | evaluate | predict | fit, path, ...content}; one clear error for anything else."""
    from ..benchmark.runner import RUN_KIND, load_results

    d = Path(run_dir)
    if not d.exists():
        raise DataError(f"report source not found: {d}")
    if not d.is_dir():
        raise DataError(f"report source must be a folder (benchmark run or fit/evaluate/predict output): {d}")
    if (d / "manifest.json").is_file():
        manifest = _read_json(d / "manifest.json")
        if not isinstance(manifest, dict) or manifest.get("kind") != RUN_KIND:
            raise DataError(f"{d / 'manifest.json'} is not an anomalens benchmark manifest")
        results = load_results(d)
        if not results:
            raise DataError(f"benchmark run {d} has no finished (method, category) results yet; run or resume it first")
        return {"kind": "benchmark", "path": d, "manifest": manifest, "results": results}
    if (d / "metrics.json").is_file():
        m = _read_json(d / "metrics.json")
        if not isinstance(m, dict):
            raise DataError(f"{d / 'metrics.json'} is not an anomalens metrics file")
        if "per_category" in m:  # `anomalens demo`
            table = {c: r["metrics"] for c, r in m["per_category"].items()}
            thresholds = {c: r.get("threshold") for c, r in m["per_category"].items()}
        elif isinstance(m.get("metrics"), dict):  # `anomalens evaluate`
            table = {c: r for c, r in m["metrics"].items() if c != "mean"}
            thresholds = {}
        else:
            raise DataError(f"{d / 'metrics.json'} has neither 'metrics' nor 'per_category'")
        if not table:
            raise DataError(f"{d / 'metrics.json'} holds no category results")
        overlays = sorted((d / "overlays").rglob("*.png")) if (d / "overlays").is_dir() else []
        return {"kind": "evaluate", "path": d, "model": m.get("model", "?"), "settings": m.get("settings", {}),
                "random_init": bool(m.get("random_init")), "table": table, "thresholds": thresholds, "overlays": overlays}
    if (d / "predictions.json").is_file() or (d / "predictions.csv").is_file():
        if (d / "predictions.json").is_file():
            p = _read_json(d / "predictions.json")
            if not isinstance(p, dict) or "predictions" not in p:
                raise DataError(f"{d / 'predictions.json'} has no 'predictions' list")
            rows, threshold, rand = p["predictions"], p.get("threshold"), bool(p.get("info", {}).get("random_init"))
        else:
            with open(d / "predictions.csv", newline="") as fh:
                rows = list(csv.DictReader(fh))
            if rows and not {"path", "score"} <= set(rows[0]):
                raise DataError(f"{d / 'predictions.csv'} lacks the path / score columns")
            threshold, rand = None, any(str(r.get("random_init")) == "True" for r in rows)
        unreadable = [r for r in rows if r.get("error") and r.get("score") in (None, "")]  # rows predict could not score
        rows = [r for r in rows if not (r.get("error") and r.get("score") in (None, ""))]
        try:
            preds = [{"path": r["path"], "score": float(r["score"]),
                      "anomalous": None if r.get("anomalous") in (None, "", "None") else str(r["anomalous"]) == "True",
                      "overlay": r.get("overlay") or None}
                     for r in rows]
        except (KeyError, ValueError) as exc:
            raise DataError(f"predictions in {d} are half-written or malformed ({exc})") from exc
        if not preds:
            raise DataError(f"no predictions in {d}" + (f" ({len(unreadable)} unreadable images only)" if unreadable else ""))
        overlays = sorted((d / "overlays").glob("*.png")) if (d / "overlays").is_dir() else []
        return {"kind": "predict", "path": d, "predictions": preds, "threshold": threshold, "random_init": rand,
                "overlays": overlays, "unreadable": [(r["path"], r.get("error")) for r in unreadable]}
    if (d / "config.json").is_file():
        c = _read_json(d / "config.json")
        if not isinstance(c, dict) or c.get("format") != "anomalens-model":
            raise DataError(f"{d / 'config.json'} is not an anomalens model config")
        if not (d / "model.safetensors").is_file():
            raise DataError(f"model folder {d} lacks model.safetensors (half-written?)")
        return {"kind": "fit", "path": d, "config": c}
    raise DataError(f"{d} is not a benchmark run or a fit / evaluate / predict output folder "
                    "(no manifest.json, metrics.json, predictions.csv/json or config.json)")
