"""anomalens: industrial visual anomaly detection behind one API.

    import anomalens
    model = anomalens.create("patchcore", backbone="wide_resnet50_2").fit("bottle/train/good")
    pred = model.predict("bottle/test")          # image_scores, anomaly_maps, labels, paths
    report = anomalens.evaluate(model, anomalens.data.MVTecAD(root, "bottle"))

Names are imported lazily (PEP 562), so `import anomalens` and the CLI's --help start without loading torch.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import AnomalensError, DataError, ModelFormatError, NotFittedError, WeightsError

__version__ = "0.1.0"

_LAZY = {
    "data": ".data", "metrics": ".metrics",
    "Detector": ".detector", "Prediction": ".detector", "load": ".detector",
    "resolve_device": ".device",
    "Report": ".evaluation", "evaluate": ".evaluation",
    "create": ".registry", "list_models": ".registry", "register_model": ".registry",
}

__all__ = [
    "__version__", "create", "load", "list_models", "evaluate", "register_model", "Detector", "Prediction", "Report",
    "resolve_device", "data", "metrics", "AnomalensError", "DataError", "ModelFormatError", "NotFittedError", "WeightsError",
]


def __getattr__(name: str) -> Any:
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'anomalens' has no attribute {name!r}")
    module = importlib.import_module(target, __name__)
    value = module if target == f".{name}" else getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
    from . import data, metrics
    from .detector import Detector, Prediction, load
    from .device import resolve_device
    from .evaluation import Report, evaluate
    from .registry import create, list_models, register_model
