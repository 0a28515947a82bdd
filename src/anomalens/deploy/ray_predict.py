"""Batch prediction on Ray Data: the streaming predict's rows, scored by a pool of model actors.

`predict_ray(model_dir, images, out_dir)` lists the images on the driver (`stream.iter_image_paths`), reads and
transforms them in parallel Ray tasks, and scores them with `num_actors` actors that each load the saved model once
(`anomalens.load(model_dir, device=..., **settings)`) and score with `stream.score_images` — the single-process
path's own scoring, so the numbers are the same. Only the rows (path, score, anomalous, random_init, error) come
back to the driver, batch by batch: the driver appends them to `predictions.csv` (or `predictions.jsonl`, then
`predictions.json`) with the same durable, resumable `ResultLog` as `predict_stream`, and at the end converts that
log into `predictions.parquet` (streamed, written to a temporary name and renamed). An interrupted run resumes
from the log: paths already written are not scored again — also across the two runners, as the files and the
run signature (`run.json`) are the same. Unreadable files are rows with the reason in `error`.

Anomaly maps never leave the actors; with `overlays_dir` each actor draws its own batches' overlays there (the
folder must be visible to the workers: local clusters, shared file systems). Models whose scores depend on the
whole set (MuSc's mutual scoring, an uncalibrated PatchCore ensemble) cannot be split over actors: a clear error,
use the single-process `predict_stream`.
"""
from __future__ import annotations

import contextlib
import csv as _csv
import json
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence, Union

import numpy as np

from ..errors import AnomalensError, DataError
from ..io import atomic_path
from ..viz.files import overlay_name, overlay_root
from .stream import (ResultLog, StreamSummary, _labels, _prepend, calibration_note, finish_json, iter_image_paths,
                     load_for_model, new_paths, refuse_foreign_outputs)

PARQUET_FILE = "predictions.parquet"
QUIET = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING}  # ray.init
INSTALL_HINT = "pip install 'anomalens[ray]'"


@dataclass
class RaySummary(StreamSummary):
    """`StreamSummary` of a Ray run, plus what the CLI reports without a model in the driver's hands."""

    random_init: bool = False
    calibration_note: str = ""
    table: Optional[Path] = None  # predictions.csv / predictions.json next to the Parquet file
    overlays: Optional[Path] = None


def _import_ray():
    try:
        import pyarrow  # noqa: F401
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise AnomalensError(f"--ray needs Ray Data and pyarrow ({exc.name or exc} is missing): {INSTALL_HINT}") from None
    return ray


def connect(address: Optional[str] = "auto") -> bool:
    """Make sure this process is connected to Ray; True when this call started (and so owns) the runtime.

    'auto' (or None): the running cluster if there is one (RAY_ADDRESS or a local head), else a new local one;
    any other string is a cluster address (`ray://host:10001`, `host:6379`) to connect to.
    """
    ray = _import_ray()
    if ray.is_initialized():
        return False
    with _no_token_notice():
        return _connect(ray, address)


class _DropTokenNotice(logging.Filter):
    """Ray's notice that a local cluster uses its default token authentication (nothing to act on); its warning that
    authentication is *disabled* still shows."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith("Token authentication is enabled")


@contextlib.contextmanager
def _no_token_notice():
    logger = logging.getLogger("ray._private.authentication.authentication_token_setup")
    drop = _DropTokenNotice()
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


def _connect(ray, address: Optional[str]) -> bool:
    if address in (None, "", "auto"):
        try:
            ray.init(address="auto", **QUIET)
        except (ConnectionError, RuntimeError, ValueError):  # no cluster running: start a local one
            ray.init(**QUIET)
    else:
        reachable(address)
        try:
            ray.init(address=address, **QUIET)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise DataError(f"cannot connect to the Ray cluster at {address}: {exc}") from None
    return True


def reachable(address: str, timeout: float = 5.0) -> None:
    """Fail fast (DataError) when nothing listens at a cluster address: Ray itself retries for minutes."""
    import socket

    rest = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise DataError(f"Ray cluster address must be HOST:PORT or ray://HOST:PORT (or 'auto'), got {address!r}")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise DataError(f"cannot reach the Ray cluster at {address} ({exc.strerror or exc}); is the head running "
                        "(`ray start --head`) and the port open?") from None


# ----------------------------------------------------------------------------------------------- the Ray stages
def _read_batch(batch: dict, transform) -> dict:
    """Ray task: file paths -> transformed float32 images (raw bytes + shape) or the reason a file is unreadable."""
    paths = [str(p) for p in batch["path"]]
    images, shapes, errors = [], [], []
    for p, f in zip(paths, batch["file"]):
        t, err = load_for_model(str(f), transform)  # the absolute name: a worker's cwd need not be the driver's
        if t is None:
            images.append(b"")
            shapes.append((0, 0, 0))
            errors.append(err)
        else:
            a = t.numpy().astype(np.float32, copy=False)
            images.append(a.tobytes())
            shapes.append(a.shape)
            errors.append("")
    return {"path": np.array(paths, dtype=object), "file": np.array([str(f) for f in batch["file"]], dtype=object),
            "image": np.array(images, dtype=object),
            "shape": np.array(shapes, dtype=np.int64).reshape(len(paths), 3), "error": np.array(errors, dtype=object)}


class Scorer:
    """Ray actor: loads the saved model once, scores batches of transformed images with `stream.score_images`."""

    def __init__(self, model_dir: str, device: str, settings: dict, threshold: Optional[float],
                 overlays_dir: Optional[str] = None, overlays_root: Optional[str] = None):
        import anomalens

        self.model = anomalens.load(model_dir, device=device, **settings)
        if threshold is not None:
            self.model.threshold_ = float(threshold)
        self.overlays_dir = Path(overlays_dir) if overlays_dir else None
        self.overlays_root = overlays_root

    def __call__(self, batch: dict) -> dict:
        import torch

        from ..detector import Prediction
        from .stream import score_images

        n = len(batch["path"])
        paths = [str(p) for p in batch["path"]]
        score = np.full(n, np.nan, dtype=np.float64)
        label = np.full(n, -1, dtype=np.int8)  # -1: no label (no threshold, or unreadable)
        good = [i for i in range(n) if not batch["error"][i]]
        images = [torch.from_numpy(np.frombuffer(batch["image"][i], dtype=np.float32).reshape(tuple(batch["shape"][i])).copy())
                  for i in good]
        t = getattr(self.model, "threshold_", None)
        for idx, scores, maps in (score_images(self.model, images) if good else []):
            rows = [good[k] for k in idx]
            score[rows] = scores
            labels = _labels(self.model, scores)
            if labels is not None:
                label[rows] = labels.astype(np.int8)
            if self.overlays_dir is not None:
                from ..viz.files import write_overlays

                files = [str(batch["file"][i]) for i in rows]  # absolute: an actor's cwd need not be the driver's
                pred = Prediction(scores, maps, labels, files, info=self.model.info(), threshold=t)
                write_overlays(pred, self.model.transform, self.overlays_dir, root=self.overlays_root,
                               scale=(getattr(self.model, "calibration_", None) or {}).get("map_scale"))
        return {"path": np.array(paths, dtype=object), "score": score, "label": label,
                "error": np.array([str(e) for e in batch["error"]], dtype=object)}


# ----------------------------------------------------------------------------------------------- the driver
def actor_cpus(cluster_cpus: float, num_actors: int, read_num_cpus: float) -> float:
    """CPUs per model actor: one, or less so that the actors and one read task fit the cluster together (the
    actors hold their CPUs for the whole run; with no CPU left for reading, the pipeline would wait forever)."""
    share = (float(cluster_cpus) - read_num_cpus) / num_actors
    if share < 0.05:
        raise DataError(f"{num_actors} model actors do not fit a Ray cluster of {cluster_cpus:g} CPUs; use fewer --workers")
    return min(1.0, int(share * 100) / 100)


def _rows(batch: dict, random_init: bool, overlay_path=None) -> list[dict]:
    rows = []
    for p, s, lab, err in zip(batch["path"], batch["score"], batch["label"], batch["error"]):
        err = str(err) or None
        rows.append({"path": str(p), "score": None if err else float(s), "random_init": random_init, "error": err,
                     "anomalous": None if err or lab < 0 else bool(lab),
                     "overlay": None if err or overlay_path is None else str(overlay_path(str(p)))})
    return rows


def _log_rows(path: Path) -> Iterator[dict]:
    """Rows of a CSV / JSON-lines result log, typed as the JSON rows (score float, anomalous bool or None)."""
    with open(path, newline="") as fh:
        if str(path).endswith(".jsonl"):
            for line in fh:
                if line.strip():
                    yield json.loads(line)
            return
        for r in _csv.DictReader(fh):
            yield {"path": r["path"], "score": float(r["score"]) if r["score"] else None,
                   "anomalous": None if r["anomalous"] == "" else r["anomalous"] == "True",
                   "random_init": r["random_init"] == "True", "error": r["error"] or None,
                   "overlay": r.get("overlay") or None}


def log_to_parquet(log_path: Path, out_path: Path, chunk: int = 65536) -> Path:
    """Convert a result log to Parquet (columns FIELDS), streamed in chunks, written atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("path", pa.string()), ("score", pa.float64()), ("anomalous", pa.bool_()),
                        ("random_init", pa.bool_()), ("error", pa.string()), ("overlay", pa.string())])
    with atomic_path(out_path) as tmp:
        with pq.ParquetWriter(str(tmp), schema) as writer:
            buf: list[dict] = []
            for row in _log_rows(log_path):
                buf.append(row)
                if len(buf) == chunk:
                    writer.write_table(pa.Table.from_pylist(buf, schema=schema))
                    buf = []
            writer.write_table(pa.Table.from_pylist(buf, schema=schema))
    return out_path


def predict_ray(
    model_dir: Union[str, os.PathLike],
    images: Union[str, os.PathLike, Sequence[Union[str, os.PathLike]]],
    out_dir: Union[str, os.PathLike],
    *,
    address: Optional[str] = "auto",
    num_actors: int = 2,
    device: str = "auto",
    threshold: Optional[float] = None,
    settings: Optional[dict] = None,
    csv: bool = True,
    resume: bool = True,
    batch_size: Optional[int] = None,
    read_batch_size: int = 16,
    actor_num_cpus: Optional[float] = None,
    read_num_cpus: float = 0.25,
    overlays_dir: Union[str, os.PathLike, None] = None,
) -> RaySummary:
    """Score `images` with the model saved in `model_dir` on Ray Data; rows as `predict_stream`'s.

    Writes `out_dir/predictions.parquet` and `predictions.csv` (`csv=False`: `predictions.json`, the CLI's
    `--format json`). `address`: 'auto' or a cluster address (see `connect`); a runtime started here is shut down
    at the end. `num_actors` model actors of `actor_num_cpus` CPUs each (default: one, or the share of the
    cluster's CPUs that leaves room for a read task, so a small cluster never deadlocks; one GPU each when `device`
    asks for CUDA, or is 'auto' on a cluster with GPUs); images read in tasks of `read_batch_size`.
    """
    import anomalens

    if num_actors < 1:
        raise ValueError(f"num_actors must be at least 1, got {num_actors}")
    settings = dict(settings or {})
    ray = _import_ray()
    from .stream import needs_whole_set, run_signature

    det = anomalens.load(model_dir, device="cpu", **settings)  # the driver's copy: signature, transform, checks only
    if threshold is not None:
        det.threshold_ = float(threshold)
    det._check_fitted("predict")
    if needs_whole_set(det):
        raise DataError(f"{det.name} scores each image against the others in its set (whole-set scoring), which Ray "
                        "cannot split over actors: run `anomalens predict` without --ray (predict_stream)")
    if address not in (None, "", "auto"):
        reachable(address)  # before any output is written
    out_dir = Path(out_dir)
    log_path = out_dir / ("predictions.csv" if csv else "predictions.jsonl")
    refuse_foreign_outputs(log_path, [out_dir / PARQUET_FILE] + ([] if csv else [out_dir / "predictions.json"]), resume)
    paths = iter_image_paths(images)
    first = next(paths, None)  # a bad first argument fails before any file is touched
    log = ResultLog(log_path, run_signature(det), resume)
    root = overlay_root(images) if overlays_dir else None  # overlay names: relative to the inputs' common folder
    overlay_path = (lambda p: Path(overlays_dir) / overlay_name(p, root)) if overlays_dir else None
    summary = RaySummary(out_dir / PARQUET_FILE, n_resumed=log.n_resumed, random_init=det.random_init,
                         calibration_note=calibration_note(det, threshold is not None),
                         overlays=Path(overlays_dir) if overlays_dir else None)
    summary.n_anomalous = 0 if det.threshold_ is not None else None
    owns = False
    try:
        todo = list(new_paths(_prepend(first, paths), set(log.done)))
        if todo:
            owns = connect(address)
            for batch in _run(ray, todo, det, model_dir, device, settings, threshold, num_actors,
                              int(batch_size or det.batch_size_for_predict), read_batch_size, actor_num_cpus,
                              read_num_cpus, overlays_dir, root):
                rows = _rows(batch, det.random_init, overlay_path)
                log.append(rows)
                summary.count(rows)
    finally:
        log.close()
        if owns:
            ray.shutdown()
    log_to_parquet(log.path, summary.path)
    if csv:
        summary.table = log.path
    else:
        info = dict(det.info(), device=device, runner="ray")
        summary.table = finish_json(log.path, out_dir / "predictions.json", {
            "info": info, "threshold": det.threshold_, "calibration": getattr(det, "calibration_", None)})
    return summary


@contextlib.contextmanager
def _ordered_and_quiet():
    """Ray Data settings for one run, restored after: rows in listing order (as the single-process log), Ray's
    progress bars only where ours show (a terminal), no execution plans / resource tables / small-run hints."""
    import ray.data

    from ..progress import progress_enabled

    ctx = ray.data.DataContext.get_current()
    data_log = logging.getLogger("ray.data")
    saved = (ctx.execution_options.preserve_order, ctx.enable_progress_bars, data_log.level)
    ctx.execution_options.preserve_order = True
    ctx.enable_progress_bars = progress_enabled()
    data_log.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            # a small run gives the actor pool fewer batches than actors: Ray's hint about it is noise here
            warnings.filterwarnings("ignore", message="The minimum number of concurrent actors")
            yield
    finally:
        ctx.execution_options.preserve_order, ctx.enable_progress_bars = saved[0], saved[1]
        data_log.setLevel(saved[2])


def _no_actor_restarts() -> dict:
    """Scorer actors are not restarted: Ray keeps their constructor arguments in the object store, where a restart
    cannot count on them (its core_worker says so on the console); a failed run resumes from its log instead."""
    return {"max_restarts": 0, "max_task_retries": 0}


def _run(ray, paths: list[str], det, model_dir, device: str, settings: dict, threshold, num_actors: int,
         batch_size: int, read_batch_size: int, actor_num_cpus: float, read_num_cpus: float, overlays_dir,
         overlays_root=None) -> Iterator[Any]:
    """Ray Data pipeline: read tasks -> model actors; yields result batches (numpy dicts) in input order."""
    import ray.data

    if actor_num_cpus is None:
        actor_num_cpus = actor_cpus(ray.cluster_resources().get("CPU", 1.0), num_actors, read_num_cpus)
    gpus = 0.0
    if str(device).startswith("cuda") or (device == "auto" and ray.cluster_resources().get("GPU", 0) >= 1):
        gpus = 1.0
    n_blocks = max(1, min(len(paths), -(-len(paths) // read_batch_size)))
    ds = ray.data.from_items([{"path": p, "file": os.path.abspath(p)} for p in paths], override_num_blocks=n_blocks)
    ds = ds.map_batches(_read_batch, fn_kwargs={"transform": det.transform}, batch_size=read_batch_size,
                        batch_format="numpy", num_cpus=read_num_cpus)
    scorer = dict(fn_constructor_kwargs={
        "model_dir": str(Path(model_dir).resolve()), "device": device, "settings": settings, "threshold": threshold,
        "overlays_dir": str(Path(overlays_dir).resolve()) if overlays_dir else None,
        "overlays_root": str(overlays_root) if overlays_root else None},
        compute=ray.data.ActorPoolStrategy(size=num_actors), batch_size=batch_size, batch_format="numpy",
        num_cpus=actor_num_cpus, num_gpus=gpus)
    with warnings.catch_warnings():  # Ray 2.5x deprecates these arguments without a named replacement yet
        warnings.filterwarnings("ignore", message=r".*ray_remote_args.* is deprecated")
        try:
            ds = ds.map_batches(Scorer, **scorer, **_no_actor_restarts())
        except TypeError:  # a Ray without them: its default restarts
            ds = ds.map_batches(Scorer, **scorer)
    with _ordered_and_quiet():
        yield from ds.iter_batches(batch_size=None, batch_format="numpy")
