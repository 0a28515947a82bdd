"""Streaming batch prediction: any number of images in bounded memory, written as they come, resumable.

`predict_stream(model, images, out_dir)` lists images lazily (folders walked, globs expanded on the fly), reads
each batch in background threads while the previous one is scored, appends one row per image to
`predictions.csv` (or `predictions.jsonl`) and flushes + fsyncs it after every batch. An interrupted run
continues where it stopped: paths already in the output are skipped, and a half-written last line is cut off
before appending. An image that cannot be read gets a row with its reason in the `error` column; nothing is
skipped silently. Anomaly maps live for one batch only (hand them to `on_batch`, e.g. to draw overlays).

Models whose scores depend on the whole set (MuSc's mutual scoring, an uncalibrated PatchCore ensemble's
min–max normalisation) are scored in one pass over every readable image, as `Detector.predict` does.
"""
from __future__ import annotations

import contextlib
import csv
import glob as _glob
import io
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Sequence, Union

import numpy as np
import torch

from ..data import ImagePaths, ImageTransform, load_image
from ..data.image_io import is_image_file
from ..detector import Detector, Prediction
from ..errors import DataError
from ..io import atomic_path
from ..outputs import record_written
from ..progress import track

FIELDS = ["path", "score", "anomalous", "random_init", "error", "overlay"]  # overlay: its file, when drawn
RUN_FILE = "run.json"
#: settings that change how a model runs, not what it scores: a resumed run may differ in these
RUNTIME_SETTINGS = {"device", "batch_size", "feature_dir", "cache_dir", "token_cache"}


# ----------------------------------------------------------------------------------------------- listing
def iter_image_paths(items: Union[str, os.PathLike, Sequence[Union[str, os.PathLike]]]) -> Iterator[str]:
    """Image files of folders (walked recursively, sorted per folder), glob patterns and files, lazily.

    A pattern or folder without images, or a path that does not exist, is a DataError (named).
    """
    items = [items] if isinstance(items, (str, os.PathLike)) else list(items)
    if not items:
        raise DataError("empty list of images")
    for item in items:
        s, p = str(item), Path(item)
        n = 0
        if any(ch in s for ch in "*?[") and not p.exists():
            for hit in sorted(_glob.glob(s, recursive=True)):  # the matches' names only
                if is_image_file(hit) and not os.path.isdir(hit):
                    n += 1
                    yield hit
            if n == 0:
                raise DataError(f"no images match the pattern {s}")
        elif p.is_dir():
            for root, dirs, files in os.walk(p):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in sorted(files):
                    if is_image_file(name) and not name.startswith("."):
                        n += 1
                        yield os.path.join(root, name)
            if n == 0:
                raise DataError(f"no images found in {p}")
        elif p.exists():
            yield s
        else:
            raise DataError(f"path not found: {p}")


def load_for_model(path: str, transform: ImageTransform) -> tuple[Optional[torch.Tensor], Optional[str]]:
    """(normalised (3, h, w) image, None) or (None, the reason it cannot be read)."""
    try:
        return transform.image(load_image(path)), None
    except (DataError, OSError, ValueError, RuntimeError) as exc:  # decoding / geometry failures of this one file
        return None, f"{type(exc).__name__}: {exc}"


# ----------------------------------------------------------------------------------------------- scoring
def needs_whole_set(model: Detector) -> bool:
    """True when a model's scores of one image depend on the other images scored with it."""
    if type(model).predict is not Detector.predict:  # e.g. MuSc: mutual scoring of the set
        return True
    banks = getattr(model, "memory_banks_", None)
    return banks is not None and len(banks) > 1 and getattr(model, "member_stats_", None) is None


def score_images(model: Detector, images: Sequence[torch.Tensor]) -> list[tuple[list[int], np.ndarray, np.ndarray]]:
    """Score transformed images of possibly different sizes: [(indices, scores (n,), maps (n, H, W))] per size."""
    groups: dict[tuple, list[int]] = {}
    for i, t in enumerate(images):
        groups.setdefault(tuple(t.shape), []).append(i)
    out = []
    with torch.inference_mode():
        for idx in groups.values():
            s, m = model._postprocess(*model._score_batch(torch.stack([images[i] for i in idx])))
            out.append((idx, np.asarray(s, dtype=np.float64), np.asarray(m, dtype=np.float32)))
    return out


def _labels(model: Detector, scores: np.ndarray) -> Optional[np.ndarray]:
    t = getattr(model, "threshold_", None)
    return None if t is None else scores > t


# ----------------------------------------------------------------------------------------------- output log
def run_signature(model: Detector) -> dict:
    """What must match for a run to be resumed: model, scoring settings, threshold, and what the model learned
    (`state_digest`: the same settings refit on other images are another model)."""
    params = {k: v for k, v in model.get_params().items() if k not in RUNTIME_SETTINGS}
    return {"model": model.name, "settings": params, "threshold": getattr(model, "threshold_", None),
            "state": state_digest(model)}


#: bytes hashed per step: a memory-mapped bank is read in pieces of this size, never copied into RAM whole
DIGEST_CHUNK_BYTES = 1 << 24


def state_digest(model: Detector) -> str:
    """SHA-256 of a fitted model's saved state: every state tensor (name, dtype, shape, bytes) and the JSON state
    next to it. The same for a model and that model saved + loaded; tensors are read in chunks along their first
    dimension (`DIGEST_CHUNK_BYTES`), so a memory-mapped or GPU bank is hashed without a whole-size copy."""
    import hashlib

    h = hashlib.sha256()
    tensors = model._state_tensors() if model.is_fitted else {}
    for name in sorted(tensors):
        t = tensors[name].detach()
        h.update(json.dumps([name, str(t.dtype).replace("torch.", ""), list(t.shape)]).encode() + b"\n")
        if t.numel() == 0:
            continue
        if t.dim() == 0:
            t = t.reshape(1)
        rows = max(1, DIGEST_CHUNK_BYTES // max(1, t[0].numel() * t.element_size()))
        for start in range(0, t.shape[0], rows):
            piece = t[start:start + rows].cpu().contiguous().reshape(-1).view(torch.uint8)
            h.update(memoryview(piece.numpy()))
    extra = model._state_extra() if model.is_fitted else {}
    h.update(json.dumps(extra, sort_keys=True, default=str).encode())
    return h.hexdigest()


def _cut_partial_line(path: Path) -> None:
    """Drop a half-written last line (a crash mid-append), reading only the file's tail."""
    size = path.stat().st_size
    if size == 0:
        return
    with open(path, "rb+") as fh:
        pos = size
        while pos > 0:
            start = max(0, pos - 65536)
            fh.seek(start)
            chunk = fh.read(pos - start)
            if pos == size and chunk.endswith(b"\n"):
                return
            cut = chunk.rfind(b"\n")
            if cut >= 0:
                fh.truncate(start + cut + 1)
                return
            pos = start
        fh.truncate(0)


class ResultLog:
    """Append-only CSV / JSON-lines log of per-image results; one write + fsync per batch; resumable."""

    def __init__(self, path: Path, signature: dict, resume: bool = True):
        self.path, self.fmt = Path(path), ("jsonl" if str(path).endswith(".jsonl") else "csv")
        self.run_path = self.path.parent / RUN_FILE
        self.done: set[str] = set()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume and self.path.exists() and self.path.stat().st_size > 0:
            saved = json.loads(self.run_path.read_text()) if self.run_path.is_file() else None
            if saved is None:
                raise DataError(f"{self.path} was not written by a run in this folder (there is no {self.run_path}); "
                                "choose another output folder, or pass --no-resume (resume=False) to replace it")
            if saved != json.loads(json.dumps(signature)):
                raise DataError(f"{self.path} holds results of another model, setting or threshold "
                                f"(see {self.run_path}); pass --no-resume (resume=False) to start it afresh")
            _cut_partial_line(self.path)
            self.done = set(self._read_paths())
            self.fh = open(self.path, "a", newline="")
            if self.fmt == "csv" and self.path.stat().st_size == 0:
                self._write(self._header())
        else:
            with atomic_path(self.run_path) as tmp:
                tmp.write_text(json.dumps(signature, indent=2) + "\n")
            self.fh = open(self.path, "w", newline="")
            if self.fmt == "csv":
                self._write(self._header())
            # ours, from the API too: a later `anomalens predict` into this folder resumes it (or names --no-resume)
            record_written([self.run_path, self.path], always=True)
        self.n_resumed = len(self.done)

    def _header(self) -> str:
        return ",".join(FIELDS) + "\n"

    def _read_paths(self) -> Iterator[str]:
        with open(self.path, newline="") as fh:
            if self.fmt == "csv":
                for row in csv.DictReader(fh):
                    yield row["path"]
            else:
                for line in fh:
                    if line.strip():
                        yield json.loads(line)["path"]

    def _write(self, text: str) -> None:
        self.fh.write(text)  # one write per batch: a crash leaves whole rows plus at most one partial line
        self.fh.flush()
        os.fsync(self.fh.fileno())

    def append(self, rows: list[dict]) -> None:
        """Write rows and make them durable."""
        if not rows:
            return
        if self.fmt == "csv":
            buf = io.StringIO()
            w = csv.DictWriter(buf, fieldnames=FIELDS, lineterminator="\n")
            w.writerows([{k: ("" if r.get(k) is None else r[k]) for k in FIELDS} for r in rows])
            text = buf.getvalue()
        else:
            text = "".join(json.dumps(r) + "\n" for r in rows)
        self._write(text)
        self.done.update(r["path"] for r in rows)

    def close(self) -> None:
        self.fh.close()


# ----------------------------------------------------------------------------------------------- the loop
@dataclass
class StreamSummary:
    """Counts of one `predict_stream` run and the file it wrote."""

    path: Path
    n_scored: int = 0
    n_failed: int = 0
    n_anomalous: Optional[int] = 0
    n_resumed: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)  # the first few (path, reason)

    @property
    def n_total(self) -> int:
        return self.n_scored + self.n_failed + self.n_resumed

    def count(self, rows: list[dict]) -> None:
        """Add one batch of result rows (the first 20 failures kept with their reasons)."""
        for r in rows:
            if r["error"]:
                self.n_failed += 1
                if len(self.failures) < 20:
                    self.failures.append((r["path"], r["error"]))
            else:
                self.n_scored += 1
                if r["anomalous"] and self.n_anomalous is not None:
                    self.n_anomalous += 1


def new_paths(paths: Iterable[str], skip: set[str]) -> Iterator[str]:
    """`paths` not in `skip` (results already written), each once: `skip` grows as they pass."""
    for p in paths:
        if p not in skip:
            skip.add(p)  # the same file named twice is scored once
            yield p


def _chunks(paths: Iterable[str], size: int, skip: set[str]) -> Iterator[list[str]]:
    batch: list[str] = []
    for p in new_paths(paths, skip):
        batch.append(p)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def predict_stream(
    model: Detector,
    images: Union[str, os.PathLike, Sequence[Union[str, os.PathLike]]],
    out_dir: Union[str, os.PathLike],
    *,
    fmt: str = "csv",
    batch_size: Optional[int] = None,
    resume: bool = True,
    num_workers: int = 2,
    on_batch: Optional[Callable[[Prediction], None]] = None,
    overlay_path: Optional[Callable[[str], Union[str, os.PathLike]]] = None,
) -> StreamSummary:
    """Score `images` (folders, globs, files) into `out_dir/predictions.csv` (fmt 'csv') or `.jsonl` ('jsonl').

    Rows: path, score, anomalous (None without a threshold), random_init, error (the reason an image could
    not be read; its score is empty), overlay (`overlay_path(image path)` of each scored image when given: the file
    `on_batch` draws). `on_batch(prediction)` sees each scored batch with its maps.
    """
    if fmt not in ("csv", "jsonl"):
        raise ValueError(f"fmt must be 'csv' or 'jsonl', got {fmt!r}")
    model._check_fitted("predict")
    paths = iter_image_paths(images)
    first = next(paths, None)  # fail on a bad first argument before any file is touched
    # geometry="auto" on a model never fitted on images (zero-shot): resolved from the first image, as predict() does
    with model._geometry_for(ImagePaths([first])) if first is not None else contextlib.nullcontext():
        return _predict_stream(model, _prepend(first, paths), out_dir, fmt, batch_size, resume, num_workers, on_batch,
                               overlay_path)


def _predict_stream(model: Detector, all_paths: Iterator[str], out_dir, fmt: str, batch_size: Optional[int], resume: bool,
                    num_workers: int, on_batch, overlay_path) -> StreamSummary:
    log = ResultLog(Path(out_dir) / f"predictions.{fmt}", run_signature(model), resume)
    summary = StreamSummary(log.path, n_resumed=log.n_resumed)
    summary.n_anomalous = 0 if getattr(model, "threshold_", None) is not None else None
    transform = model.transform
    batch = len(log.done) + 10**12 if needs_whole_set(model) else int(batch_size or model.batch_size_for_predict)
    if model.frame.large and batch_size is None:
        batch = 1  # tiles at native resolution: one image at a time, its tiles batched by the model
    try:
        with ThreadPoolExecutor(max(1, num_workers)) as pool:
            chunks = _chunks(all_paths, batch, set(log.done))
            for names, loaded in track(_prefetched(pool, chunks, transform), f"{model.name}: scoring"):
                _score_and_log(model, names, loaded, log, summary, on_batch, overlay_path)
    finally:
        log.close()
    return summary


def _prepend(first: Optional[str], rest: Iterator[str]) -> Iterator[str]:
    if first is not None:
        yield first
    yield from rest


def _prefetched(pool: ThreadPoolExecutor, chunks: Iterator[list[str]], transform: ImageTransform):
    """(names, [(image, error)]) per batch; the next batch is read in the pool while this one is scored."""
    submit = lambda names: (names, [pool.submit(load_for_model, p, transform) for p in names])  # noqa: E731
    ahead = next(chunks, None)
    ahead = submit(ahead) if ahead is not None else None
    while ahead is not None:
        names, futures = ahead
        nxt = next(chunks, None)
        ahead = submit(nxt) if nxt is not None else None
        yield names, [f.result() for f in futures]


def _score_and_log(model, names, loaded, log: ResultLog, summary: StreamSummary, on_batch, overlay_path=None) -> None:
    rows: dict[int, dict] = {}
    good = [i for i, (t, _) in enumerate(loaded) if t is not None]
    for i, (_, err) in enumerate(loaded):
        if err is not None:
            rows[i] = {"path": names[i], "score": None, "anomalous": None, "random_init": model.random_init, "error": err}
    if good:
        if needs_whole_set(model):
            pred = model.predict([names[i] for i in good])  # the set-level path reads the files itself
            results = [(list(range(len(good))), pred.image_scores, pred.anomaly_maps)]
        else:
            results = score_images(model, [loaded[i][0] for i in good])
        for idx, scores, maps in results:
            labels = _labels(model, scores)
            for j, k in enumerate(idx):
                i = good[k]
                rows[i] = {"path": names[i], "score": float(scores[j]), "random_init": model.random_init, "error": None,
                           "anomalous": None if labels is None else bool(labels[j]),
                           "overlay": None if overlay_path is None else str(overlay_path(names[i]))}
            if on_batch is not None:
                on_batch(Prediction(scores, maps, labels, [names[good[k]] for k in idx], info=model.info(),
                                    threshold=getattr(model, "threshold_", None)))
    ordered = [rows[i] for i in range(len(names))]
    summary.count(ordered)
    log.append(ordered)


def calibration_note(model: Detector, manual: bool = False) -> str:
    """One line on the threshold and what `calibration_` recorded (set size, asked and empirical FPR)."""
    t = getattr(model, "threshold_", None)
    if t is None:
        return "no threshold set: scores only"
    if manual:
        return f"threshold {t:.6g} (given on the command line)"
    cal = getattr(model, "calibration_", None) or {}
    parts = []
    if "n_images" in cal:
        parts.append(f"{cal['n_images']} normal images")
    for key in ("fpr_requested", "fpr"):
        if cal.get(key) is not None:
            parts.append(f"target FPR {cal[key]:g}")
            break
    for key in ("fpr_empirical", "empirical_fpr"):
        if key in cal and cal[key] is not None:
            parts.append(f"empirical FPR {cal[key]:.3g}")
    if cal.get("fpr_achievable") is not None:
        parts.append(f"lowest resolvable FPR {cal['fpr_achievable']:.3g}")
    shown = ("n_images", "fpr", "fpr_requested", "fpr_empirical", "empirical_fpr", "fpr_achievable")
    extra = {k: v for k, v in cal.items() if k not in shown}
    parts += [f"{k} {v}" for k, v in extra.items() if isinstance(v, (int, float, str, bool))]
    return f"threshold {t:.6g}" + (f" (calibrated on {', '.join(parts)})" if parts else " (set by hand or uncalibrated)")


def refuse_foreign_outputs(log_path: Path, outputs: Sequence[Path], resume: bool = True) -> None:
    """Refuse (DataError) when a final output file (JSON, Parquet) is already there but this run's log is not: it
    was not written by a run in this folder, so it is a user's file. resume=False asks to replace it.
    Under a CLI command the output guard (`anomalens.outputs`) has already decided, with its --force."""
    from ..outputs import guard_active

    if not resume or Path(log_path).exists() or guard_active():
        return
    found = [str(p) for p in outputs if Path(p).exists()]
    if found:
        raise DataError(f"{', '.join(found)} already exist(s) and is not from a run in this folder; choose another "
                        "--out, or pass --no-resume (resume=False) to replace it")


def finish_json(log_path: Path, out_path: Path, header: dict) -> Path:
    """Assemble `{...header, "predictions": [rows]}` from a JSON-lines log, streaming (never all rows in memory)."""
    with atomic_path(out_path) as tmp, open(tmp, "w") as out, open(log_path) as src:
        head = json.dumps(dict(header, predictions=[]), indent=2, default=str)
        out.write(head[: head.rindex("[") + 1] + "\n")
        first = True
        for line in src:
            if line.strip():
                out.write(("" if first else ",\n") + "    " + line.strip())
                first = False
        out.write("\n  ]\n}\n")
    return out_path
