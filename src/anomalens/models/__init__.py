"""Built-in detectors (importing this package registers them)."""
from .musc import MuSc
from .patchcore import PatchCore

__all__ = ["MuSc", "PatchCore"]
