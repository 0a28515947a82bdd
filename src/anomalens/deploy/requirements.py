"""What `anomalens serve` needs, checked without importing torch (the CLI answers before any heavy import)."""
from __future__ import annotations

import socket

from ..errors import AnomalensError

INSTALL_HINT = "pip install 'anomalens[serve]'"


def require_serve_deps() -> None:
    """Import FastAPI, uvicorn and python-multipart, or raise one clear AnomalensError naming the extra to install."""
    missing = [name for name, mods in (("fastapi", ("fastapi",)), ("uvicorn", ("uvicorn",)),
                                       ("python-multipart", ("python_multipart", "multipart")))
               if not any(_importable(m) for m in mods)]
    if missing:
        raise AnomalensError(f"anomalens serve needs {', '.join(missing)}: {INSTALL_HINT}")


def _importable(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def check_port_free(host: str, port: int) -> None:
    """Refuse (one line) a host that does not resolve or a port already in use, before the model is loaded and
    before the "serving on ..." line (uvicorn would log its own lines and exit 1 much later). Port 0: any free one."""
    if int(port) == 0:
        return
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise AnomalensError(f"--host {host!r} does not resolve: {exc.strerror or exc}") from None
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: a closing socket is no conflict
        try:
            s.bind(addr)
        except OSError as exc:
            raise AnomalensError(f"cannot serve on {host}:{port}: {exc.strerror or exc} (another process listens "
                                 "there? choose another --port)") from None
