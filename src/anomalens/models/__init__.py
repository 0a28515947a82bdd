"""Built-in detectors (importing this package registers them)."""
from .patchcore import PatchCore

__all__ = ["PatchCore"]
