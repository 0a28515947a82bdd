"""The benchmark runner: every (method setting, category) in its paper setting, one atomic JSON each, resumable.

RUN_DIR layout:
    manifest.json                         what was asked, versions, device, seeds, weights / random-init per run
    results/<run>/<category>.json         metrics + curve points + per-image scores (written last = the "done" mark)
    results/<run>/<category>/*.png        thumbnails of the worst false positives / negatives
    summary.csv, summary.md               per category + mean, ours next to paper / official numbers
A finished (run, category) is read back, never recomputed; a crash loses at most the category in progress.
"""
from __future__ import annotations

import hashlib
import json
import math
import platform
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

import numpy as np

from ..errors import AnomalensError, DataError
from ..io import write_json
from .presets import MethodPreset, get_preset

RUN_KIND = "anomalens-benchmark"
RESULT_FORMAT = 1
EXTRA_KEYS = ("pro_musc",)
CURVE_POINTS = 200
N_WORST = 3
DATASETS = ("mvtec", "visa")


@dataclass(frozen=True)
class Job:
    """One unit of work: a method setting (run) on one category."""

    preset: MethodPreset
    run: str  # e.g. "patchcore", "winclip-1shot-seed0"
    setting: str  # the row group in the summary, seeds pooled: "winclip-1shot"
    category: str
    shots: int
    seed: int
    settings: dict

    def path(self, out: Path) -> Path:
        return out / "results" / self.run / f"{self.category}.json"

    def fingerprint(self, dataset: str) -> str:
        """Identity of the experiment: a stored result is reused only when this matches."""
        ident = json.dumps([self.preset.model, dataset, self.category, self.shots, self.seed, self.settings],
                           sort_keys=True, default=str)
        return hashlib.sha1(ident.encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------------- planning
def fewshot_methods() -> list[str]:
    """Names of the presets that take --shots."""
    from .presets import PRESETS

    return sorted(n for n, p in PRESETS.items() if p.fit == "shots")


def split_overrides(overrides: Optional[dict], methods: Sequence[str]) -> tuple[dict, dict[str, dict]]:
    """`key=value` (all methods that accept the key) and `method.key=value` (one method) settings."""
    common, per = {}, {m: {} for m in methods}
    for key, value in (overrides or {}).items():
        head, dot, rest = key.partition(".")
        if dot and head in per:
            per[head][rest] = value
        elif dot:
            raise AnomalensError(f"setting {key!r} names method {head!r}, which is not in --methods ({', '.join(methods)})")
        else:
            common[key] = value
    return common, per


def _catalogue() -> dict[str, set[str]]:
    """Built-in models and their settings read from source (no torch: a fully resumed run never imports it)."""
    from ..catalogue import model_catalogue

    return {e.name: set(e.settings) for e in model_catalogue()}


def _valid_settings(model: str) -> set[str]:
    import inspect

    built_in = _catalogue().get(model)
    if built_in is not None:
        return built_in
    from ..registry import get_entry  # a model registered by the user: its class (imports torch)

    entry = get_entry(model)
    return {k for k in inspect.signature(entry.cls.__init__).parameters if k != "self"}


def _is_model(name: str) -> bool:
    if name in _catalogue():
        return True
    from ..registry import list_models

    return name in list_models()


def plan_jobs(dataset: str, methods: Sequence[str], categories: Sequence[str], shots: Optional[Sequence[int]] = None,
              seeds: Sequence[int] = (0,), overrides: Optional[dict] = None, device: str = "auto") -> list[Job]:
    """Every (run, category) job, settings resolved; unknown methods or settings fail here, before any work."""
    presets = [get_preset(m) for m in methods]
    missing = [p.model for p in presets if not _is_model(p.model)]
    if missing:
        from ..registry import list_models

        raise AnomalensError(f"model(s) {missing} not registered in this anomalens (available: {', '.join(list_models())})")
    common, per = split_overrides(overrides, methods)
    valid = {p.name: _valid_settings(p.model) for p in presets}
    unused = [k for k in common if not any(k in v for v in valid.values())]
    if unused:
        raise AnomalensError(f"no method in {list(methods)} has setting(s) {unused}")
    for m, kv in per.items():
        bad = sorted(set(kv) - valid[m])
        if bad:
            raise AnomalensError(f"{m} has no setting(s) {bad}; valid: {sorted(valid[m])}")
    jobs = []
    for p in presets:
        shot_list = list(shots if shots is not None else p.default_shots) if p.fit == "shots" else [0]
        for k in shot_list:
            if k < max(p.min_shots, 0):
                raise AnomalensError(f"--shots must be >= {max(p.min_shots, 0)} for {p.name}, got {k}")
            seed_list = list(seeds) if (p.fit == "shots" and k > 0) else [int(seeds[0]) if seeds else 0]
            setting = f"{p.name}-{k}shot" if p.fit == "shots" else p.name
            for seed in seed_list:
                run = f"{setting}-seed{seed}" if (p.fit == "shots" and k > 0) else setting
                for cat in categories:
                    s = dict(p.settings(dataset, cat, k))
                    s.update({kk: v for kk, v in common.items() if kk in valid[p.name]})
                    s.update(per[p.name])
                    s.setdefault("device", device)
                    jobs.append(Job(p, run, setting, cat, int(k), int(seed), s))
    return jobs


def dataset_categories(dataset: str, root: Path, categories: Optional[Sequence[str]] = None) -> list[str]:
    """The categories to run: all under `root`, or the named ones (each checked to exist)."""
    from ..data.layout import mvtec_categories, visa_categories  # no torch: a fully resumed run never imports it

    if dataset not in DATASETS:
        raise DataError(f"--dataset must be one of {', '.join(DATASETS)}, got {dataset!r}")
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"dataset root not found: {root}")
    have = mvtec_categories(root) if dataset == "mvtec" else visa_categories(root)
    if not categories:
        return list(have)
    missing = [c for c in categories if c not in have]
    if missing:
        raise DataError(f"category {missing[0]!r} not found under {root} (found: {', '.join(have)})")
    return list(dict.fromkeys(categories))


def open_split(dataset: str, root: Path, category: str, split: str):
    """The train or test split of a category."""
    from ..data import MVTecAD, VisA

    return (MVTecAD if dataset == "mvtec" else VisA)(root, category, split)


# ---------------------------------------------------------------------------------------------------- results
def read_result(path: Path) -> Optional[dict]:
    """A finished result, or None when absent; a foreign or torn file is an error naming it."""
    if not path.is_file():
        return None
    try:
        rec = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"unreadable result file {path} ({exc}); delete it to recompute that category") from exc
    if not isinstance(rec, dict) or rec.get("format") != RUN_KIND or "metrics" not in rec:
        raise DataError(f"{path} is not an anomalens benchmark result; delete it to recompute that category")
    return rec


def _downsample(x: np.ndarray, y: np.ndarray, n: int = CURVE_POINTS) -> list[list[float]]:
    """At most n points of a monotone curve, first and last kept; rounded for compact JSON."""
    if len(x) > n:
        idx = np.unique(np.r_[np.linspace(0, len(x) - 1, n).round().astype(int), len(x) - 1])
        x, y = x[idx], y[idx]
    return [[round(float(a), 5) for a in x], [round(float(b), 5) for b in y]]


def roc_points(g) -> Optional[list]:
    """(FPR, TPR) points of grouped scores (highest threshold first)."""
    P, N = g.pos.sum(), g.neg.sum()
    if P == 0 or N == 0:
        return None
    return _downsample(np.r_[0.0, np.cumsum(g.neg) / N], np.r_[0.0, np.cumsum(g.pos) / P])


def curve_points(pred) -> dict:
    """Image ROC, pixel ROC and PRO (FPR ≤ 0.3) points of a labelled prediction."""
    from .. import metrics
    from ..metrics import curves
    from ..metrics.image import image_groups
    from ..metrics.pixel import pixel_groups

    out = {"image_roc": roc_points(image_groups(pred.image_scores, pred.gt_labels))}
    if pred.masks is not None:
        g = pixel_groups(pred.anomaly_maps, pred.masks)
        out["pixel_roc"] = roc_points(g)
        if g.n_regions > 0 and g.neg.sum() > 0:
            fpr, pro = curves.pro_curve(g)
            keep = fpr <= metrics.FPR_LIMIT
            out["pro"] = _downsample(fpr[keep], pro[keep])
    return out


def _thumbnail(pred, ds, transform, i: int, vmin: float, vmax: float, path: Path, height: int = 112) -> str:
    """Image | heat-map overlay of prediction i as a small PNG; returns its file name."""
    from PIL import Image

    from ..viz import save_overlay

    img = transform.denormalize(ds[i].image).permute(1, 2, 0).numpy()
    mask = pred.masks[i] if pred.masks is not None else None
    save_overlay(path, img, pred.anomaly_maps[i], vmin, vmax, mask, float(pred.image_scores[i]))
    with Image.open(path) as im:
        w = max(1, round(im.width * height / im.height))
        small = im.resize((w, height), Image.BILINEAR)
    small.save(path)
    return path.name


def worst_cases(pred, ds, transform, folder: Path, n: int = N_WORST) -> dict:
    """Highest-scored normal images (false positives) and lowest-scored anomalous ones (false negatives)."""
    labels = np.asarray(pred.gt_labels)
    scores = np.asarray(pred.image_scores)
    normal, anomalous = np.flatnonzero(labels == 0), np.flatnonzero(labels == 1)
    picks = {"false_positives": normal[np.argsort(-scores[normal], kind="stable")][:n],
             "false_negatives": anomalous[np.argsort(scores[anomalous], kind="stable")][:n]}
    vmin, vmax = float(np.min(pred.anomaly_maps)), float(np.max(pred.anomaly_maps))
    out = {}
    for kind, idx in picks.items():
        out[kind] = []
        for rank, i in enumerate(idx):
            entry = {"path": pred.paths[i], "score": float(scores[i])}
            if not str(pred.paths[i]).startswith("<"):
                entry["thumbnail"] = f"{folder.name}/" + _thumbnail(pred, ds, transform, int(i), vmin, vmax,
                                                                    folder / f"{kind[:-1]}_{rank}.png")
            out[kind].append(entry)
    return out


def _finite(d: dict) -> dict:
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in d.items()}


def evaluate_job(job: Job, dataset: str, root: Path, out: Path) -> dict:
    """Fit (per the preset), evaluate on the test split, and assemble the result record."""
    import anomalens
    from .. import metrics as M

    det = anomalens.create(job.preset.model, **job.settings)
    fit_paths: list[str] = []
    t0 = time.perf_counter()
    if job.preset.fit == "train" or (job.preset.fit == "shots" and job.shots > 0):
        train = open_split(dataset, root, job.category, "train")
        if job.shots > 0:
            train = job.preset.draw(train, job.shots, job.seed) if job.preset.draw else train.sample(job.shots, job.seed)
            fit_paths = list(train.paths)
        det.fit(train)
        n_fit = len(train)
    else:
        det.fit(None)
        n_fit = 0
    fit_seconds = time.perf_counter() - t0
    test = open_split(dataset, root, job.category, "test")
    rep = anomalens.evaluate(det, test, score_hook=job.preset.postprocess)  # else the model's evaluation hook
    pred = rep.prediction
    values = dict(rep.metrics)
    extras: dict = {f"{k}_raw": v for k, v in rep.raw_metrics.items()}
    if pred.masks is not None:
        extras["pro_musc"] = M.pro_musc(pred.anomaly_maps, pred.masks)
    folder = job.path(out).with_suffix("")
    worst = worst_cases(pred, test.with_transform(det.transform), det.transform, folder)
    labels = np.asarray(pred.gt_labels)
    images = [{"path": p, "label": int(l), "defect": r.defect_type, "score": round(float(s), 6)}
              for p, l, r, s in zip(pred.paths, labels, test.records, pred.image_scores)]
    threshold = getattr(det, "threshold_", None)
    return {
        "format": RUN_KIND, "format_version": RESULT_FORMAT, "fingerprint": job.fingerprint(dataset),
        "method": job.preset.name, "model": job.preset.model, "run": job.run, "setting": job.setting,
        "paper_setting": job.preset.paper_setting(job.settings, job.shots), "dataset": dataset, "category": job.category,
        "shots": job.shots, "seed": job.seed, "fit_images": n_fit, "shot_paths": fit_paths,
        "settings": det.get_params(), "random_init": bool(det.random_init), "device": str(det.device_),
        "metrics": _finite(values), "extra_metrics": _finite(extras),
        "n_images": rep.n_images, "n_anomalous": rep.n_anomalous,
        "seconds": {"fit": round(fit_seconds, 3), "predict": round(rep.seconds, 3)},
        "threshold": None if threshold is None else float(threshold),
        "curves": curve_points(pred), "images": images, "worst": worst,
    }


# ---------------------------------------------------------------------------------------------------- manifest
def versions() -> dict:
    """Versions of what produced the numbers."""
    from importlib import metadata

    out = {"python": platform.python_version()}
    for pkg in ("anomalens", "torch", "torchvision", "open_clip_torch", "timm", "numpy", "faiss-cpu"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    from .. import __version__

    out["anomalens"] = __version__
    return out


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _manifest(out: Path, dataset: str, root: Path, jobs: list[Job], seeds, overrides, device: str,
              computes: bool = True) -> dict:
    """The run's manifest; `computes=False` (every job done earlier) keeps the device it recorded: resolving one
    would import torch for nothing."""
    path = out / "manifest.json"
    old = json.loads(path.read_text()) if path.is_file() else {}
    if computes or "device" not in old:
        from ..device import resolve_device

        resolved = str(resolve_device(device))
    else:
        resolved = old["device"]
    runs = {}
    for j in jobs:
        runs.setdefault(j.run, {"method": j.preset.name, "model": j.preset.model, "setting": j.setting, "shots": j.shots,
                                "seed": j.seed, "fit": j.preset.fit,
                                "weights": j.settings.get("weights", "default"), "settings": j.settings})
    return {
        "kind": RUN_KIND, "format_version": RESULT_FORMAT, "created": old.get("created", _now()), "updated": _now(),
        "dataset": dataset, "root": str(root), "categories": sorted({j.category for j in jobs}),
        "methods": sorted({j.preset.name for j in jobs}), "seeds": list(seeds), "overrides": overrides or {},
        "device": resolved, "versions": versions(), "runs": runs,
        "invocations": old.get("invocations", []),
    }


# ---------------------------------------------------------------------------------------------------- the run
def run_benchmark(dataset: str, root, methods: Sequence[str], out, categories: Optional[Sequence[str]] = None,
                  shots: Optional[Sequence[int]] = None, seeds: Sequence[int] = (0,), overrides: Optional[dict] = None,
                  device: str = "auto", log: Optional[Callable[[str], None]] = None) -> Path:
    """Run (or resume) a benchmark into `out`; returns the summary CSV path. Input is checked before any work."""
    from ..progress import track
    from .summary import write_summary

    log = log or (lambda msg: None)
    root, out = Path(root), Path(out)
    if not methods:
        raise AnomalensError("no methods given (e.g. --methods patchcore,winclip)")
    cats = dataset_categories(dataset, root, categories)
    jobs = plan_jobs(dataset, methods, cats, shots, seeds, overrides, device)
    if shots is not None and not any(j.preset.fit == "shots" for j in jobs):
        log(f"note: --shots applies to methods with a few-shot mode ({', '.join(fewshot_methods())}); none is selected")
    if out.exists() and not out.is_dir():
        raise DataError(f"output {out} exists and is not a directory")
    todo, reused = [], []
    for job in jobs:  # read back every finished result first: a mismatch fails before any work
        rec = read_result(job.path(out))
        if rec is None:
            todo.append(job)
        elif rec.get("fingerprint") != job.fingerprint(dataset):
            raise DataError(f"{job.path(out)} holds a result of other settings for {job.run}/{job.category}; "
                            "use a new output folder (or delete that file)")
        else:
            reused.append(job)
    manifest = _manifest(out, dataset, root, jobs, seeds, overrides, device, computes=bool(todo))
    invocation = {"started": _now(), "computed": [], "reused": [f"{j.run}/{j.category}" for j in reused]}
    manifest["invocations"].append(invocation)
    write_json(out / "manifest.json", manifest)
    for job in reused:
        log(f"{job.run} / {job.category}: done earlier, read back")
    for job in track(todo, "benchmark"):
        log(f"{job.run} / {job.category}: running")
        rec = evaluate_job(job, dataset, root, out)
        write_json(job.path(out), rec)
        manifest["runs"][job.run].update(random_init=rec["random_init"], weights=rec["settings"].get("weights"))
        invocation["computed"].append(f"{job.run}/{job.category}")
        m = rec["metrics"]
        log(f"{job.run} / {job.category}: image AUROC {_pct(m.get('image_auroc'))}, pixel AUROC "
            f"{_pct(m.get('pixel_auroc'))}, AUPRO {_pct(m.get('aupro'))} ({sum(rec['seconds'].values()):.1f} s)")
        write_json(out / "manifest.json", manifest)
    for job in reused:
        if "random_init" not in manifest["runs"][job.run]:
            rec = read_result(job.path(out))
            manifest["runs"][job.run].update(random_init=rec["random_init"], weights=rec["settings"].get("weights"))
    invocation["finished"] = _now()
    write_json(out / "manifest.json", manifest)
    return write_summary(out)


def _pct(v) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}"


def load_results(out: Path) -> list[dict]:
    """Every finished result record of a run folder, sorted by run then category."""
    recs = [read_result(p) for p in sorted((Path(out) / "results").glob("*/*.json"))]
    return [r for r in recs if r is not None]


def parse_int_list(text: Optional[str], what: str) -> Optional[list[int]]:
    """'0,1,2,4' -> [0, 1, 2, 4]; None stays None."""
    if text is None:
        return None
    try:
        return [int(t) for t in str(text).split(",") if t.strip() != ""]
    except ValueError as exc:
        raise AnomalensError(f"{what} must be comma-separated integers, got {text!r}") from exc


def iter_categories(results: Iterable[dict]) -> list[str]:
    """Categories in first-seen order."""
    return list(dict.fromkeys(r["category"] for r in results))
