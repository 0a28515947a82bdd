"""Where weights come from: an explicit local file, then the cache (ANOMALENS_HOME), then the library's download.

Offline, the error names the exact file to place and where. `weights=None` means random init.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Optional

import torch

from ..errors import WeightsError


def cache_dir() -> Path:
    """The anomalens cache: $ANOMALENS_HOME, else ~/.cache/anomalens."""
    env = os.environ.get("ANOMALENS_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "anomalens"


def weights_dir() -> Path:
    """Folder for backbone checkpoints inside the cache."""
    return cache_dir() / "weights"


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a .safetensors or torch checkpoint (tensors only: weights_only=True, no arbitrary pickle)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt download, wrong format
        raise WeightsError(f"cannot read weights file {path}: {exc}") from exc
    for key in ("state_dict", "model"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    if not isinstance(sd, dict):
        raise WeightsError(f"{path} does not hold a state dict")
    return sd


def resolve_file(
    filename: str,
    explicit: Optional[str | os.PathLike] = None,
    download: Optional[Callable[[Path], None]] = None,
    url: str = "",
    what: str = "weights",
) -> Path:
    """Local file -> cache file -> download into the cache; offline errors say which file to put where."""
    if explicit is not None:
        p = Path(explicit).expanduser()
        if not p.is_file():
            raise WeightsError(f"{what}: weights file not found: {p}")
        return p
    cached = weights_dir() / filename
    if cached.is_file():
        return cached
    if download is None:
        raise WeightsError(f"{what}: no weights at {cached} and no download source; put the file there or pass a path")
    cached.parent.mkdir(parents=True, exist_ok=True)
    try:
        download(cached)
    except Exception as exc:
        raise WeightsError(
            f"{what}: could not download {url or filename} ({type(exc).__name__}: {str(exc)[:200]}). "
            f"Offline? Download it elsewhere and put it at {cached} (or set ANOMALENS_HOME, or pass weights='/path/to/{filename}'); "
            "weights=None runs with random init"
        ) from exc
    if not cached.is_file():
        raise WeightsError(f"{what}: download finished but {cached} is missing")
    return cached


def network_available(host: str = "huggingface.co", port: int = 443, timeout: float = 3.0) -> bool:
    """Whether a weights host answers at all (one quick connect; HF_HUB_OFFLINE=1 means no), so offline runs fail at once."""
    import socket

    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes") or os.environ.get("ANOMALENS_OFFLINE") == "1":
        return False
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def hub_cached_file(repo_id: str, filenames: tuple[str, ...], cache_dirs: tuple[Optional[Path], ...] = (None,)) -> Optional[Path]:
    """A file already in a Hugging Face hub cache (ours or the default one), without touching the network."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - huggingface_hub ships with open_clip and timm
        return None
    for folder in cache_dirs:
        for name in filenames:
            found = try_to_load_from_cache(repo_id, name, cache_dir=None if folder is None else str(folder))
            if isinstance(found, str) and Path(found).is_file():
                return Path(found)
    return None


def offline_weights_error(what: str, expected: Path, example: str) -> WeightsError:
    """The one-line error for pretrained weights that cannot be had offline, with the CLI and Python spellings."""
    return WeightsError(
        f"{what}: no network and no cached checkpoint. Put the file at {expected}, or pass a local file "
        f"(CLI: --set weights=/path/to/{example}; Python: weights='/path/to/{example}'); weights=None runs random init"
    )


def download_url(url: str) -> Callable[[Path], None]:
    """A downloader for `resolve_file` using torch.hub (atomic: it writes a temp file then renames)."""

    def _fetch(dest: Path) -> None:
        torch.hub.download_url_to_file(url, str(dest), progress=True)

    return _fetch
