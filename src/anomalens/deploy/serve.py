"""An HTTP service for a saved model: FastAPI app + uvicorn, with requests batched by a single inference thread.

`create_app(model_or_dir)` loads the model once and returns a FastAPI app:

- `POST /predict`: the image as multipart field `file` or as the raw request body (any Content-Type but text/* and
  JSON) -> `{"path", "score", "anomalous", "threshold"}`; `path` is the upload's file name (null for a raw body),
  `anomalous` is null without a threshold. `?map=png` adds `map_png`: the anomaly map at the image's original size
  as a base64 16-bit greyscale PNG, value v stored as 1 + round((v - map_min) / (map_max - map_min) * 65534) and
  0 where the model saw nothing (outside a centre crop), with `map_min` / `map_max` in the JSON.
- `GET /health`: model, device, threshold, random_init, batching settings.
- `GET /metrics`: /predict request counts by status, latency (count, mean, p50, p95 over the last 10,000), batches
  served and their mean / max size, requests in flight.

Bad input (empty body, corrupt or unsupported image, too small, over the size limit) answers 4xx with
`{"error": message}`; the service stays up. Concurrent requests are scored together: one batcher task takes the
queued requests (up to `max_batch`, waiting at most `max_wait_ms` after the first) and runs them through the model
in one dedicated thread (the event loop never blocks on inference); images of different sizes are scored per size
group, as the streaming predict does, so each response equals `model.predict` of that image alone. Models whose
scores depend on the whole set scored together (MuSc, an uncalibrated ensemble) score each request alone.

`serve(...)` runs the app under uvicorn; SIGTERM / SIGINT drain the requests in flight and return normally.
"""
# no `from __future__ import annotations`: FastAPI reads the handlers' annotations (`request: Request`) at run time

import asyncio
import base64
import collections
import io
import logging
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Optional, Union

import numpy as np
import torch

from ..detector import Detector
from ..errors import AnomalensError

log = logging.getLogger("anomalens.serve")

#: PIL formats accepted from the network: those of `data.image_io.IMAGE_EXTENSIONS`, nothing else is decoded
UPLOAD_FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "WEBP")
#: decoded size limit (a small compressed file can unpack to a huge image)
MAX_PIXELS = 64_000_000
LATENCY_WINDOW = 10_000
from .requirements import INSTALL_HINT, _importable, require_serve_deps  # noqa: E402,F401  (torch-free, for the CLI)


# ----------------------------------------------------------------------------------------------- input
class UploadError(Exception):
    """A request the service refuses: HTTP status + one-line message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def too_many_pixels(label: str, pixels: int, max_pixels: int) -> UploadError:
    """The one 413 of an image over the pixel limit, whatever its size (PIL's own decompression-bomb refusal of the
    largest ones included)."""
    return UploadError(413, f"{label}: image of {pixels:,} pixels is over the limit of {max_pixels:,} pixels")


def _open_image(data: bytes, label: str, max_pixels: int):
    """PIL's lazy open (header only) without its decompression-bomb warning; its bomb error (over 2 x
    Image.MAX_IMAGE_PIXELS) becomes the same 413 as the service's own pixel limit."""
    import re
    import warnings

    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            return Image.open(io.BytesIO(data), formats=list(UPLOAD_FORMATS))
        except Image.DecompressionBombError as exc:
            found = re.search(r"\((\d+) pixels\)", str(exc))
            pixels = int(found.group(1)) if found else 2 * int(Image.MAX_IMAGE_PIXELS or 0) + 1
            raise too_many_pixels(label, pixels, max_pixels) from None


def decode_upload(data: bytes, name: Optional[str] = None, max_pixels: int = MAX_PIXELS):
    """Bytes of an uploaded image -> 8-bit RGB PIL image, or UploadError: 400 empty / corrupt, 413 too many pixels
    (one wording whatever the size), 415 not an image of a supported format, 422 too small to inspect."""
    from PIL import Image, UnidentifiedImageError

    from ..data.image_io import to_rgb
    from ..errors import DataError

    label = name or "upload"
    if not data:
        raise UploadError(400, "empty body: send an image as multipart field 'file' or as the raw request body")
    try:
        img = _open_image(data, label, max_pixels)
    except UnidentifiedImageError:
        raise UploadError(415, f"{label}: not an image of a supported format ({', '.join(UPLOAD_FORMATS)})") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise UploadError(400, f"{label}: corrupt or unreadable image: {exc}") from None
    w, h = img.size
    if w * h > max_pixels:
        raise too_many_pixels(label, w * h, max_pixels)
    try:
        img.load()  # decode now: a truncated file fails here
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise UploadError(400, f"{label}: corrupt or unreadable image: {exc}") from None
    try:
        return to_rgb(img, label)
    except DataError as exc:
        raise UploadError(422, str(exc)) from None


def map_png(amap: np.ndarray) -> dict:
    """An (H, W) float map (NaN = unseen) as a base64 16-bit greyscale PNG + its range (see the module doc)."""
    from PIL import Image

    finite = np.isfinite(amap)
    lo = float(amap[finite].min()) if finite.any() else 0.0
    hi = float(amap[finite].max()) if finite.any() else 0.0
    scale = 65534.0 / (hi - lo) if hi > lo else 0.0
    q = np.zeros(amap.shape, dtype=np.uint16)
    q[finite] = (1.0 + np.round((amap[finite].astype(np.float64) - lo) * scale)).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(q).save(buf, format="PNG")  # uint16 (H, W) -> mode I;16
    return {"map_png": base64.b64encode(buf.getvalue()).decode("ascii"), "map_min": lo, "map_max": hi}


def decode_map_png(result: dict) -> np.ndarray:
    """Inverse of `map_png` (up to quantisation): the float map with NaN where the model saw nothing."""
    from PIL import Image

    q = np.asarray(Image.open(io.BytesIO(base64.b64decode(result["map_png"])))).astype(np.float64)
    lo, hi = float(result["map_min"]), float(result["map_max"])
    out = lo + (q - 1.0) * ((hi - lo) / 65534.0)
    out[q == 0] = np.nan
    return out.astype(np.float32)


# ----------------------------------------------------------------------------------------------- batching
@dataclass
class Job:
    """One request's image, ready for the model: transformed (3, h, w), or raw [0, 1] for whole-set models; the
    image's original (H, W)."""

    image: torch.Tensor
    size: tuple[int, int]
    future: Optional[asyncio.Future] = None


class Metrics:
    """Counters of /predict requests and batches; updated on the event loop only (no locks)."""

    def __init__(self) -> None:
        self.by_status: collections.Counter = collections.Counter()
        self.latency_total = 0.0
        self.latency_count = 0
        self.latencies: collections.deque = collections.deque(maxlen=LATENCY_WINDOW)
        self.batches = 0
        self.batched_images = 0
        self.max_batch = 0
        self.in_flight = 0

    def request(self, status: int, seconds: float) -> None:
        self.by_status[str(status)] += 1
        self.latency_total += seconds
        self.latency_count += 1
        self.latencies.append(seconds)

    def batch(self, size: int) -> None:
        self.batches += 1
        self.batched_images += size
        self.max_batch = max(self.max_batch, size)

    def snapshot(self) -> dict:
        lat = np.asarray(self.latencies, dtype=np.float64) * 1000.0
        return {
            "requests": {"total": int(sum(self.by_status.values())), "by_status": dict(sorted(self.by_status.items())),
                         "in_flight": self.in_flight},
            "latency_ms": {"count": self.latency_count,
                           "mean": self.latency_total * 1000.0 / self.latency_count if self.latency_count else None,
                           "p50": float(np.percentile(lat, 50)) if lat.size else None,
                           "p95": float(np.percentile(lat, 95)) if lat.size else None,
                           "window": LATENCY_WINDOW},
            "batches": {"count": self.batches, "images": self.batched_images,
                        "mean_size": self.batched_images / self.batches if self.batches else None,
                        "max_size": self.max_batch},
        }


class Batcher:
    """Collects queued jobs into batches and scores them in one inference thread; resolves each job's future with
    (score, map at model resolution) or the exception its scoring raised."""

    def __init__(self, model: Detector, max_batch: int = 8, max_wait_ms: float = 5.0, metrics: Optional[Metrics] = None):
        from .stream import needs_whole_set

        if int(max_batch) < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if float(max_wait_ms) < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        self.model, self.max_batch, self.max_wait = model, int(max_batch), float(max_wait_ms) / 1000.0
        self.whole_set = needs_whole_set(model)
        self.metrics = metrics if metrics is not None else Metrics()
        self._queue: Optional[asyncio.Queue] = None
        self._task: Optional[asyncio.Task] = None
        self._executor: Optional[ThreadPoolExecutor] = None

    def prepare(self, img) -> Job:
        """A decoded RGB PIL image -> a Job (call in a worker thread: the transform is CPU work)."""
        if self.whole_set:
            import torchvision.transforms.functional as TF

            return Job(TF.pil_to_tensor(img).float().div_(255.0), (img.height, img.width))
        return Job(self.model.transform.image(img), (img.height, img.width))

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="anomalens-infer")
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        while self._queue is not None and not self._queue.empty():  # nothing should be left: uvicorn drains first
            job = self._queue.get_nowait()
            if not job.future.done():
                job.future.set_exception(RuntimeError("the service is shutting down"))
        self._task = self._executor = None

    async def submit(self, job: Job) -> tuple[float, np.ndarray]:
        if self._task is None or self._task.done():
            raise RuntimeError("the batcher is not running: serve the app under its lifespan "
                               "(uvicorn, or `with TestClient(app)`)")
        job.future = asyncio.get_running_loop().create_future()
        await self._queue.put(job)
        return await job.future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            deadline = loop.time() + self.max_wait
            while len(batch) < self.max_batch:
                if not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                    continue
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), left))
                except asyncio.TimeoutError:
                    break
            batch = [j for j in batch if not j.future.done()]  # a client that went away cancelled its future
            if not batch:
                continue
            results = await loop.run_in_executor(self._executor, self._score, [j.image for j in batch])
            self.metrics.batch(len(batch))
            for job, res in zip(batch, results):
                if job.future.done():
                    continue
                if isinstance(res, BaseException):
                    job.future.set_exception(res)
                else:
                    job.future.set_result(res)

    def _score(self, images: list[torch.Tensor]) -> list[Any]:
        """(score, map) per image, or the exception it raised; a failing size group is retried image by image so one
        bad request cannot fail the others."""
        from .stream import score_images

        if self.whole_set:
            return [self._alone(t) for t in images]
        out: list[Any] = [None] * len(images)
        try:
            for idx, scores, maps in score_images(self.model, images):
                for j, i in enumerate(idx):
                    out[i] = (float(scores[j]), maps[j])
        except Exception:  # noqa: BLE001 - retried one by one below, each keeping its own error
            for i, t in enumerate(images):
                if out[i] is None:
                    try:
                        (_, s, m), = score_images(self.model, [t])
                        out[i] = (float(s[0]), m[0])
                    except Exception as exc:  # noqa: BLE001
                        out[i] = exc
        return out

    def _alone(self, raw: torch.Tensor) -> Any:
        try:
            pred = self.model.predict(raw[None])
            return float(pred.image_scores[0]), pred.anomaly_maps[0]
        except Exception as exc:  # noqa: BLE001
            return exc


# ----------------------------------------------------------------------------------------------- the app
def create_app(
    model_or_dir: Union[Detector, str, os.PathLike],
    *,
    device: Optional[str] = "auto",
    max_batch: int = 8,
    max_wait_ms: float = 5.0,
    max_upload_mb: float = 20.0,
    threshold: Optional[float] = None,
    max_pixels: int = MAX_PIXELS,
):
    """A FastAPI app serving a model (a fitted Detector, or a saved model's folder loaded on `device`).

    `max_batch` / `max_wait_ms`: the batcher takes up to `max_batch` queued requests, waiting at most `max_wait_ms`
    after the first; `max_upload_mb`: larger bodies answer 413; `threshold` overrides the model's own.
    """
    require_serve_deps()
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse
    from starlette.datastructures import UploadFile

    import anomalens

    if isinstance(model_or_dir, Detector):
        model = model_or_dir
        model._check_fitted("serve")
    else:
        model = anomalens.load(model_or_dir, device=device)
    if threshold is not None:
        model.threshold_ = float(threshold)
    if float(max_upload_mb) <= 0:
        raise ValueError(f"max_upload_mb must be > 0, got {max_upload_mb}")
    limit = int(float(max_upload_mb) * 2**20)
    model.setup()  # the backbone is built (and its weights resolved) before the first request
    metrics = Metrics()
    batcher = Batcher(model, max_batch, max_wait_ms, metrics)

    @asynccontextmanager
    async def lifespan(app):
        await batcher.start()
        try:
            yield
        finally:
            await batcher.stop()

    app = FastAPI(title="anomalens", version=anomalens.__version__, lifespan=lifespan,
                  description=f"{model.name} anomaly detector")
    app.state.model, app.state.batcher, app.state.metrics = model, batcher, metrics

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException as StarletteHTTPException

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        """404 / 405 / ... answer {"error": ...} like every other error of the service."""
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404:
            detail = f"no such endpoint: {request.method} {request.url.path} (POST /predict, GET /health, GET /metrics)"
        elif exc.status_code == 405:
            detail = f"{request.method} is not allowed on {request.url.path}" + (
                f" (use {exc.headers.get('allow')})" if exc.headers and exc.headers.get("allow") else "")
        return JSONResponse({"error": detail}, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        return error(422, f"invalid request: {exc.errors()}")

    @app.middleware("http")
    async def count_predict(request: Request, call_next):
        if request.url.path != "/predict":
            return await call_next(request)
        start = time.perf_counter()
        metrics.in_flight += 1
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            metrics.in_flight -= 1
            metrics.request(status, time.perf_counter() - start)

    async def read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise UploadError(413, f"upload of {int(declared):,} bytes is over the limit of {max_upload_mb:g} MiB")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise UploadError(413, f"upload is over the limit of {max_upload_mb:g} MiB")
            chunks.append(chunk)
        return b"".join(chunks)

    async def image_of(request: Request) -> tuple[bytes, Optional[str]]:
        """(image bytes, upload file name or None) from a multipart field `file` or the raw body."""
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        body = await read_body(request)
        if ctype == "multipart/form-data":
            async def replay():
                return {"type": "http.request", "body": body, "more_body": False}

            try:
                form = await Request(request.scope, replay).form(max_files=4, max_fields=16)
            except Exception as exc:  # noqa: BLE001 - starlette raises HTTPException / MultiPartException on bad forms
                raise UploadError(400, f"malformed multipart body: {getattr(exc, 'detail', exc)}") from None
            try:
                item = form.get("file")
                if not isinstance(item, UploadFile):
                    raise UploadError(400, "multipart upload needs a file field named 'file'")
                return await item.read(), item.filename or None
            finally:
                await form.close()
        if ctype.startswith("text/") or ctype in ("application/json", "application/x-www-form-urlencoded"):
            raise UploadError(415, f"unsupported content type {ctype!r}: send the image as multipart field 'file' "
                                   "or as the raw body (image/* or application/octet-stream)")
        return body, None

    @app.post("/predict")
    async def predict(request: Request):
        """Score one image (multipart field `file` or raw body); `?map=png` adds the anomaly map."""
        want_map = request.query_params.get("map")
        if want_map not in (None, "png"):
            return error(400, f"map={want_map!r} is not supported: use map=png (or leave it out)")
        try:
            data, name = await image_of(request)
            job = await asyncio.to_thread(lambda: batcher.prepare(decode_upload(data, name, max_pixels)))
        except UploadError as exc:
            return error(exc.status, str(exc))
        try:
            score, amap = await batcher.submit(job)
        except (AnomalensError, ValueError) as exc:
            return error(422, f"{name or 'upload'}: {exc}")
        except Exception as exc:  # noqa: BLE001 - the service stays up; the reason goes to the log and the client
            log.exception("scoring failed")
            return error(500, f"scoring failed: {type(exc).__name__}: {exc}")
        t = getattr(model, "threshold_", None)
        out = {"path": name, "score": score, "anomalous": None if t is None else bool(score > t),
               "threshold": None if t is None else float(t)}
        if want_map == "png":
            out.update(await asyncio.to_thread(lambda: map_png(model.transform.map_to_original(amap, job.size))))
        return out

    @app.get("/health")
    async def health():
        t = getattr(model, "threshold_", None)
        return {"status": "ok", "model": model.name, "device": str(model.device_),
                "threshold": None if t is None else float(t), "random_init": bool(model.random_init),
                "max_batch": batcher.max_batch, "max_wait_ms": batcher.max_wait * 1000.0,
                "max_upload_mb": float(max_upload_mb), "anomalens_version": anomalens.__version__}

    @app.get("/metrics")
    async def metrics_view():
        return metrics.snapshot()

    return app


# ----------------------------------------------------------------------------------------------- running
def serve(
    model_or_dir: Union[Detector, str, os.PathLike],
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    log_level: str = "info",
    graceful_timeout_s: float = 30.0,
    **app_kw: Any,
) -> Optional[int]:
    """Run `create_app(model_or_dir, **app_kw)` under uvicorn until SIGTERM / SIGINT (requests in flight are answered
    first, for at most `graceful_timeout_s`); returns the signal that stopped it (None when it stopped otherwise)."""
    require_serve_deps()
    import uvicorn

    app = create_app(model_or_dir, **app_kw)
    config = uvicorn.Config(app, host=host, port=int(port), log_level=log_level, lifespan="on",
                            timeout_graceful_shutdown=graceful_timeout_s)
    server = uvicorn.Server(config)
    stopped: list[int] = []
    previous = {}
    if threading.current_thread() is threading.main_thread():
        # uvicorn drains on these signals, restores the handlers it found and then re-raises the signal: with the
        # default handlers still in place the process would die of SIGTERM after a clean drain; ours just record it
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, lambda signum, frame: stopped.append(signum))
    try:
        server.run()
    except SystemExit as exc:  # uvicorn exits 1 when it cannot bind or start the app
        raise AnomalensError(f"could not start the server on {host}:{port} (see the log above: port in use?)") from exc
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if not server.started:
        raise AnomalensError(f"could not start the server on {host}:{port} (port in use or not allowed?)")
    return stopped[0] if stopped else None
