"""Built-in detectors (importing this package registers them)."""
from .anomalydino import AnomalyDINO
from .clipad import CLIPAD
from .musc import MuSc
from .patchcore import PatchCore
from .winclip import WinCLIP

__all__ = ["AnomalyDINO", "CLIPAD", "MuSc", "PatchCore", "WinCLIP"]
