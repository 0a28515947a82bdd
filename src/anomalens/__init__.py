"""anomalens: industrial visual anomaly detection behind one API.

    import anomalens
    model = anomalens.create("patchcore", backbone="wide_resnet50_2").fit("bottle/train/good")
    pred = model.predict("bottle/test")          # image_scores, anomaly_maps, labels, paths
    report = anomalens.evaluate(model, anomalens.data.MVTecAD(root, "bottle"))
"""
__version__ = "0.1.0"

from . import data, metrics  # noqa: E402
from .detector import Detector, Prediction, load  # noqa: E402
from .device import resolve_device  # noqa: E402
from .errors import AnomalensError, DataError, ModelFormatError, NotFittedError, WeightsError  # noqa: E402
from .evaluation import Report, evaluate  # noqa: E402
from .registry import create, list_models, register_model  # noqa: E402

__all__ = [
    "__version__", "create", "load", "list_models", "evaluate", "register_model", "Detector", "Prediction", "Report",
    "resolve_device", "data", "metrics", "AnomalensError", "DataError", "ModelFormatError", "NotFittedError", "WeightsError",
]
