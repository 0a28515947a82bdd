"""`anomalens serve`: a saved model behind an HTTP API (FastAPI + uvicorn), concurrent requests batched."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .common import DEVICE_HELP, RANDOM_INIT_TAG, check_device, err_console, esc, parse_settings, require_model_dir, user_errors


@user_errors
def serve(
    model_dir: Path = typer.Argument(..., help="a model saved by `anomalens fit`"),
    host: str = typer.Option("127.0.0.1", help="address to listen on (0.0.0.0: every interface)"),
    port: int = typer.Option(8000, help="TCP port"),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    max_batch: int = typer.Option(8, help="most requests scored in one model call"),
    max_wait_ms: float = typer.Option(5.0, help="how long the first queued request waits for others to join its batch"),
    max_upload_mb: float = typer.Option(20.0, help="larger uploads answer 413"),
    threshold: Optional[float] = typer.Option(None, help="decision threshold on the image score (overrides the calibrated one)"),
    setting: Optional[List[str]] = typer.Option(None, "--set", help="override a run-time setting key=value: batch_size, device, feature_dir, cache_dir, token_cache (fit-time settings need a refit)"),
    log_level: str = typer.Option("info", help="uvicorn log level (warning: quieter)"),
):
    """Serve a model over HTTP: POST /predict (multipart field `file` or raw image body; ?map=png adds the anomaly
    map), GET /health, GET /metrics. SIGTERM / Ctrl-C answer the requests in flight, then exit 0."""
    from anomalens.deploy.requirements import check_port_free, require_serve_deps

    require_serve_deps()  # one line naming `pip install anomalens[serve]` before torch is even imported
    if max_batch < 1:
        raise ValueError(f"--max-batch must be >= 1, got {max_batch}")
    if max_upload_mb <= 0:
        raise ValueError(f"--max-upload-mb must be > 0, got {max_upload_mb}")
    if max_wait_ms < 0:
        raise ValueError(f"--max-wait-ms must be >= 0, got {max_wait_ms}")
    if not 0 <= port <= 65535:
        raise ValueError(f"--port must be in 0..65535, got {port}")
    settings = parse_settings(setting)
    from anomalens.settings import check_runtime_overrides, saved_settings

    check_runtime_overrides(settings, saved_settings(model_dir), where="serve --set")
    check_device(device)
    require_model_dir(model_dir)
    check_port_free(host, port)  # before the model loads and before the "serving on" line
    import anomalens
    from anomalens.deploy import serve as serving

    det = anomalens.load(model_dir, device=device, **settings)
    t = threshold if threshold is not None else det.threshold_
    err_console.print(esc(f"serving {det.name} from {model_dir} on http://{host}:{port} (device {det.device_}, "
                          + (f"threshold {t:.6g}" if t is not None else "no threshold: scores only")
                          + f", batches up to {max_batch})") + (RANDOM_INIT_TAG if det.random_init else ""),
                      highlight=False, soft_wrap=True)
    sig = serving.serve(det, host=host, port=port, log_level=log_level, max_batch=max_batch, max_wait_ms=max_wait_ms,
              max_upload_mb=max_upload_mb, threshold=threshold)
    if sig is not None:
        import signal

        err_console.print(f"stopped on {signal.Signals(sig).name}: requests in flight answered", highlight=False)


def register(app: typer.Typer) -> None:
    app.command()(serve)
