"""ONNX export of fitted detectors: the whole scoring in one graph, run by onnxruntime alone.

Graph contract (every model): input `image` float32 (N, 3, H, W) = the model's own `transform.image(...)` outputs
stacked (H, W fixed at export; N dynamic); outputs `image_score` (N,) and `anomaly_map` (N, H, W). A JSON side
file `<name>.json` holds the transform, input size, threshold, calibration and provenance.

PatchCore: backbone taps → locally aware patch features → exact nearest neighbour against the memory bank
(an initializer; ‖q‖² + ‖m‖² − 2 q·m, then min / top-k) → Eq. 6 (or Eq. 7 re-weighting) → bilinear upsampling →
Gaussian smoothing (scipy-equal reflect padding, a constant-index Gather). Ensembles need `calibrate` first
(their per-member normalisation statistics are baked in). WinCLIP: the CLIP image tower, window masks, text
prototypes T and (WinCLIP+) the k-shot memories as initializers; the tiles of a non-square input are fixed by H, W.
CLIP-AD: the stock image tower with the V-V surgery path traced beside it (the same hooks as `dual_path_forward`),
T = [T_n, T_a] and (SDP+) the stage adapters as initializers; image_score = p_abn + map_max (the predict score).
AnomalyDINO: its graph is in models/anomalydino/graph.py (the official Pillow resize, the ViT, the bank as an initializer).

Exported with torch's TorchScript-based exporter (`dynamo=False`): the hook-based feature taps trace as plain ops.

Running needs no torch: `from anomalens.deploy.export import OnnxModel` imports onnxruntime and numpy only; the
exporting names (`export_onnx`, `parity`, `build_graph`, `input_size`, the graph modules) load the torch side
(`onnx_graphs`) on first use.
"""
from __future__ import annotations

import importlib
import json
import os
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from ..errors import AnomalensError, ModelFormatError

SIDE_FORMAT = "anomalens-onnx"
SIDE_VERSION = 1
OPSET = 18
INPUTS, OUTPUTS = ["image"], ["image_score", "anomaly_map"]
#: names of the torch side, loaded on first use (PEP 562)
_TORCH_SIDE = ("export_onnx", "parity", "build_graph", "input_size", "GatherAggregator", "ExportFeatures",
               "PatchCoreGraph", "WinCLIPGraph", "CLIPADGraph")


class ExportError(AnomalensError, ValueError):
    """A model (or one of its settings) cannot be exported."""


def side_path(onnx_path: Union[str, os.PathLike]) -> Path:
    """The JSON side file of an .onnx file (same name, .json)."""
    return Path(onnx_path).with_suffix(".json")


class OnnxModel:
    """An exported model in onnxruntime (no torch needed): `run(images)` on batches transformed as the side file's
    `transform` says (`.transform` builds that transform, which itself needs torch)."""

    def __init__(self, path: Union[str, os.PathLike], providers: Optional[list[str]] = None, threads: int = 0):
        import onnxruntime as ort

        self.path = Path(path)
        side = side_path(self.path)
        if not self.path.is_file() or not side.is_file():
            raise ModelFormatError(f"need {self.path} and its side file {side}")
        self.meta = json.loads(side.read_text())
        if self.meta.get("format") != SIDE_FORMAT:
            raise ModelFormatError(f"{side} is not an anomalens ONNX side file")
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(self.path), opts, providers=providers or ["CPUExecutionProvider"])
        self.threshold = self.meta.get("threshold")
        self.input_size = tuple(self.meta["input_size"])
        self._transform = None

    @property
    def transform(self):
        """The model's `ImageTransform` (from the side file; imports torch on first use)."""
        if self._transform is None:
            from ..data import ImageTransform

            self._transform = ImageTransform(**dict(self.meta["transform"]))
        return self._transform

    def run(self, images: Any) -> tuple[np.ndarray, np.ndarray]:
        """(N, 3, H, W) transformed images (numpy, or a torch tensor) -> (scores (N,), maps (N, H, W))."""
        x = images.numpy() if hasattr(images, "numpy") and not isinstance(images, np.ndarray) else np.asarray(images)
        score, amap = self.session.run(OUTPUTS, {"image": np.ascontiguousarray(x, dtype=np.float32)})
        return score, amap


def __getattr__(name: str) -> Any:
    if name in _TORCH_SIDE:
        value = getattr(importlib.import_module(".onnx_graphs", __package__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'anomalens.deploy.export' has no attribute {name!r}")
