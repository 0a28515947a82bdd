"""The one place that turns a device request ("auto", "cpu", "cuda:1", torch.device) into a torch.device."""
from __future__ import annotations

import torch

from .errors import AnomalensError

DeviceLike = "str | torch.device | None"


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """`auto`/None picks CUDA when present, else CPU; explicit CUDA requests fail clearly without CUDA."""
    if device is None or (isinstance(device, str) and device.lower() == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise AnomalensError(f"unknown device {device!r}: use 'auto', 'cpu', 'cuda' or 'cuda:N'") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise AnomalensError(f"device {device!r} requested but CUDA is not available; use --device cpu or auto")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise AnomalensError(f"device {device!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
    return dev
