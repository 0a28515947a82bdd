"""Built-in detectors (importing this package registers them)."""
from .musc import MuSc
from .patchcore import PatchCore
from .winclip import WinCLIP

__all__ = ["MuSc", "PatchCore", "WinCLIP"]
