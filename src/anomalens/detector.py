"""The detector contract: fit / predict / calibrate / save / load, and the typed `Prediction`.

Subclasses store settings in `__init__` (nothing else), learn state in `_fit` into attributes ending in
`_`, and score in `_predict_batch`. Saved models are a directory: `config.json` (settings, format version,
threshold) + `model.safetensors` (tensors). No pickle is ever written or read.
"""
from __future__ import annotations

import contextlib
import functools
import inspect
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Optional

import numpy as np
import torch

from .data import DataLike, ImageDataset, ImageTransform, as_dataset, iter_batches
from .data.geometry import Frame, Tiler, auto_geometry, build_frame
from .device import resolve_device
from .errors import DataError, ModelFormatError, NotFittedError, SettingError
from .io import atomic_path, load_safetensors_mmap
from .outputs import check_save_target, is_model_dir as _is_model_dir  # noqa: F401  (torch-free, shared with the CLI)
from .settings import check_settings

FORMAT_NAME = "anomalens-model"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
TENSORS_FILE = "model.safetensors"


@dataclass(repr=False)
class Prediction:
    """Scores of N images: higher = more anomalous.

    image_scores (N,) float64; anomaly_maps (N, H, W) float32 at the model's input resolution;
    labels (N,) bool, or None when no threshold is set; masks / gt_labels carried from a labelled dataset;
    components: named per-image arrays (N,) a model may expose besides its score (e.g. CLIP-AD's p_abn, map_max).
    threshold: the decision threshold the labels come from (None when unset).
    """

    image_scores: np.ndarray
    anomaly_maps: np.ndarray
    labels: Optional[np.ndarray]
    paths: list[str]
    gt_labels: Optional[np.ndarray] = None
    masks: Optional[np.ndarray] = None
    info: dict = field(default_factory=dict)
    components: dict[str, np.ndarray] = field(default_factory=dict)
    threshold: Optional[float] = None
    original_sizes: Optional[list] = None
    geometry: Optional[ImageTransform] = None

    def map_at_original_size(self, i: int) -> np.ndarray:
        """Anomaly map of image i over the image as stored, (H, W) float32: the geometry undone (bilinear), NaN where
        the model saw nothing (outside a centre crop). For overlays and exports; metrics use `anomaly_maps`."""
        if self.original_sizes is None or self.geometry is None:
            raise ValueError("this Prediction does not know its images' original sizes")
        return self.geometry.map_to_original(self.anomaly_maps[i], self.original_sizes[i])

    def maps_at_original_size(self) -> list[np.ndarray]:
        """Every image's anomaly map at its original size (a list: sizes may differ), see `map_at_original_size`."""
        return [self.map_at_original_size(i) for i in range(len(self))]

    def mask_at_original_size(self, i: int) -> Optional[np.ndarray]:
        """Ground-truth mask of image i over the image as stored (nearest; False outside the model's view), or None."""
        if self.masks is None or self.original_sizes is None or self.geometry is None:
            return None
        m = self.geometry.map_to_original(self.masks[i].astype(np.float32), self.original_sizes[i], mode="nearest")
        return np.nan_to_num(m, nan=0.0) > 0.5

    def __len__(self) -> int:
        return len(self.image_scores)

    def __repr__(self) -> str:
        """A one-line summary (never the arrays): N, score range, anomalous count, threshold, random-init flag."""
        n = len(self)
        parts = [f"{n} image{'s' if n != 1 else ''}"]
        if n:
            parts.append(f"scores {float(np.min(self.image_scores)):.4g}..{float(np.max(self.image_scores)):.4g}")
        if self.labels is not None:
            parts.append(f"{int(np.sum(self.labels))} anomalous at threshold {self.threshold:.4g}"
                         if self.threshold is not None else f"{int(np.sum(self.labels))} anomalous")
        else:
            parts.append("no threshold (call calibrate() or set threshold_)")
        if self.info.get("model"):
            parts.append(f"model {self.info['model']}")
        if self.info.get("random_init"):
            parts.append("random-init backbone")
        return f"Prediction({', '.join(parts)})"

    __str__ = __repr__

    def records(self) -> list[dict]:
        """One dict per image: path, score, label (for CSV / JSON export)."""
        labels = self.labels if self.labels is not None else [None] * len(self)
        return [
            {"path": p, "score": float(s), "anomalous": (None if l is None else bool(l))}
            for p, s, l in zip(self.paths, self.image_scores, labels)
        ]


class Detector:
    """Base class of every anomaly detector (scikit-learn style)."""

    name: ClassVar[str] = "detector"
    zero_shot: ClassVar[bool] = False
    #: numeric ranges checked when a model is built, interval notation; merged over subclasses
    setting_ranges: ClassVar[dict[str, str]] = {"batch_size": "[1, inf)", "scale": "(0, 4]"}
    #: the geometries this method supports (`anomalens.data.geometry`); "auto" resolves among them
    geometries: ClassVar[tuple[str, ...]] = ("paper", "whole", "aspect", "tiles")
    #: how tile scores become an image score under tiling ("max": a defect anywhere makes the image anomalous)
    tile_reduce: ClassVar[str] = "max"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Wrap each subclass's `__init__` so every setting is type- and range-checked once it is stored."""
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is None:
            return

        @functools.wraps(init)
        def checked_init(self, *args: Any, **kw: Any) -> None:
            init(self, *args, **kw)
            if type(self).__init__ is checked_init:  # only the outermost __init__ checks (after all settings exist)
                check_settings(type(self), {k: getattr(self, k) for k in _param_names(type(self)) if hasattr(self, k)})
                _check_geometry_setting(self)

        cls.__init__ = checked_init  # type: ignore[method-assign]

    # ---- settings -------------------------------------------------------
    def get_params(self) -> dict[str, Any]:
        """The constructor settings, read back from attributes of the same name."""
        sig = inspect.signature(type(self).__init__)
        return {k: _jsonable(getattr(self, k)) for k in sig.parameters if k != "self"}

    def __repr__(self) -> str:
        """Settings that differ from the defaults only (as scikit-learn), so a REPL echo of `fit(...)` stays one line."""
        defaults = {k: _jsonable(p.default) for k, p in inspect.signature(type(self).__init__).parameters.items() if k != "self"}
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items() if k not in defaults or defaults[k] != v)
        return f"{type(self).__name__}({args})"

    @property
    def paper_transform(self) -> ImageTransform:
        """The method's own preprocessing (geometry="paper")."""
        raise NotImplementedError

    @property
    def paper_tiler(self) -> Optional[Tiler]:
        """The method's own tiling of its paper frame, if its paper tiles (WinCLIP); None otherwise."""
        return None

    @property
    def input_size(self) -> Optional[int]:
        """The square side a fixed-input model takes (a ViT); None when any size works (a CNN)."""
        return None

    @property
    def geometry_size(self):
        """S: the side "whole" squashes to and "aspect" sets the shorter side to (default: the input size)."""
        return self.input_size

    @property
    def resolved_geometry(self) -> str:
        """The geometry in use: `geometry_` (resolved from the data at fit, saved with the model), else the setting;
        "auto" not yet resolved reads as "paper"."""
        g = getattr(self, "geometry_", None) or getattr(self, "geometry", "paper")
        return "paper" if g == "auto" else g

    @property
    def frame(self) -> Frame:
        """The resolved geometry: transform from image to frame, and the tiler from frame to model inputs."""
        g = self.resolved_geometry
        if g not in self.geometries:
            from .errors import SettingError

            raise SettingError(f"{self.name} supports geometry {', '.join(self.geometries)} (got {g!r})"
                               + (f": {self.geometry_refusal}" if getattr(self, "geometry_refusal", "") else ""))
        return build_frame(g, self.paper_transform, self.input_size, self.geometry_size,
                           fixed_input=self.input_size is not None, tile=getattr(self, "tile", None),
                           overlap=getattr(self, "overlap", None), scale=getattr(self, "scale", 1.0),
                           paper_tiler=self.paper_tiler, reduce=self.tile_reduce)

    @property
    def transform(self) -> ImageTransform:
        """The image geometry and normalisation this model expects (the resolved geometry's frame transform)."""
        return self.frame.transform

    def _auto_geometry(self, dataset: ImageDataset) -> str:
        """geometry="auto" on `dataset`: see `anomalens.data.geometry.auto_geometry`, limited to this method's."""
        size = dataset.original_size(0) if len(dataset) else None
        S = self.geometry_size
        S = min(S) if isinstance(S, (list, tuple)) else S
        g = auto_geometry(getattr(dataset, "name", None), size, int(S or 256))
        paper = self.paper_transform
        if g == "aspect" and paper.crop is None and not isinstance(paper.resize, tuple):
            return "paper"  # the method's own preprocessing already keeps the aspect and every pixel (WinCLIP, AnomalyDINO)
        return g if g in self.geometries else "paper"

    def _frames_out(self, images: torch.Tensor) -> tuple:
        """`_predict_batch` on a batch of frames: directly, or view by view through the frame's tiler (stitched)."""
        tiler = self.frame.tiler
        if tiler is None:
            return self._predict_batch(images)
        return tiler.score(images, self._predict_batch, self.batch_size_for_predict)

    def _input_batches(self, ds: ImageDataset, description: str):
        """Model-input batches of `ds` (for fit): the frames, or their tiler's views in chunks of about batch_size."""
        tiler = self.frame.tiler
        for images, _, _ in self._batches(ds, description):
            if tiler is None:
                yield images
                continue
            boxes = tiler.boxes(*images.shape[-2:])
            per = max(1, self.batch_size_for_predict // images.shape[0])
            for i in range(0, len(boxes), per):
                yield tiler.views(images, boxes[i:i + per])

    @property
    def random_init(self) -> bool:
        """True when the backbone runs without pretrained weights (`weights=None`)."""
        return hasattr(self, "weights") and self.weights is None

    @property
    def is_fitted(self) -> bool:
        """Whether `fit` has run (zero-shot models are always ready)."""
        return self.zero_shot or getattr(self, "fitted_", False)

    def _check_fitted(self, action: str = "predict") -> None:
        if not self.is_fitted:
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet; call fit(normal_images) before {action}()")

    @property
    def device_(self) -> torch.device:
        """The resolved torch device."""
        return resolve_device(getattr(self, "device", "auto"))

    # ---- the contract -----------------------------------------------------
    def setup(self) -> "Detector":
        """Build the backbone now (resolving its weights), so a missing file fails before any data work."""
        return self

    def fit(self, data: Optional[DataLike] = None) -> "Detector":
        """Learn from normal (or, for zero-shot methods, any/no) images; returns self."""
        if data is None:
            if not self.zero_shot:
                raise ValueError(f"{type(self).__name__}.fit needs normal images (a dataset, folder, paths or tensor batch)")
            self._fit(None)
        else:
            ds = as_dataset(data)
            if getattr(self, "geometry", None) == "auto":
                self.geometry_ = self._auto_geometry(ds)
            else:
                self.geometry_ = self.resolved_geometry
            self.frame  # an unsupported geometry fails here, before any data work
            self._resolve_for(ds)
            self._fit(ds.with_transform(self.transform))
            # the frame (H, W) of the first training image: the default input size of an export when the geometry
            # keeps each image's own size (aspect, tiles)
            self.frame_size_ = list(self.transform.resized_size(ds.original_size(0))) if len(ds) else None
        self.fitted_ = True
        self.threshold_ = None
        return self

    def _fit(self, dataset: Optional[ImageDataset]) -> None:
        raise NotImplementedError

    def _resolve_for(self, dataset: ImageDataset) -> None:
        """Settings that depend on the training data, fixed before `_fit` (geometry="auto" is resolved before)."""

    def predict(self, data: DataLike) -> Prediction:
        """Score images: image scores, anomaly maps, and labels when a threshold is set."""
        self._check_fitted("predict")
        ds = as_dataset(data)
        with self._geometry_for(ds):
            return self._predict_dataset(ds.with_transform(self.transform))

    @contextlib.contextmanager
    def _geometry_for(self, ds: ImageDataset):
        """A model with geometry="auto" that was never fitted on data (zero-shot) resolves it for this call only."""
        if getattr(self, "geometry", None) != "auto" or getattr(self, "geometry_", None):
            yield
            return
        self.geometry_ = self._auto_geometry(ds)
        try:
            self.frame
            yield
        finally:
            self.geometry_ = None

    def _predict_dataset(self, ds: ImageDataset) -> Prediction:
        scores, maps, masks, paths, parts, sizes = [], [], [], [], [], []
        for images, batch_masks, samples in self._batches(ds, f"{self.name}: scoring"):
            out = self._frames_out(images)  # (scores, maps) or (scores, maps, {name: (B,) array})
            scores.append(np.asarray(out[0], dtype=np.float64))
            maps.append(np.asarray(out[1], dtype=np.float32))
            parts.append(out[2] if len(out) > 2 else {})
            masks.append(batch_masks)
            paths += [smp.path for smp in samples]
            sizes += [smp.size for smp in samples]
        maps, masks = _one_size(maps, masks)
        image_scores, anomaly_maps = self._postprocess(np.concatenate(scores), np.concatenate(maps))
        pred = self._prediction(ds, image_scores, anomaly_maps, masks, paths, sizes)
        names = set(parts[0]) if parts else set()
        if names and all(set(p) == names for p in parts):
            pred.components = {k: np.concatenate([np.asarray(p[k], dtype=np.float64) for p in parts]) for k in sorted(names)}
        return pred

    def _batches(self, ds: ImageDataset, description: str):
        """(images, masks, samples) batches of `ds` through this model's transform (one image at a time for tiles at
        native resolution: memory follows the image, not the batch)."""
        frame = self.frame
        return iter_batches(ds, frame.transform, 1 if frame.large else self.batch_size_for_predict, description=description)

    def _prediction(self, ds: ImageDataset, image_scores: np.ndarray, anomaly_maps: np.ndarray, masks: list, paths: list[str],
                    sizes: Optional[list] = None) -> Prediction:
        """Assemble a Prediction: labels from the threshold, ground truth carried over when the dataset has it, each
        image's original size and the geometry that maps it to the model's input (for maps at original size)."""
        if sizes is None or len(sizes) != len(image_scores) or any(sz is None for sz in sizes):
            sizes = [ds.original_size(i) for i in range(len(ds))] if len(ds) == len(image_scores) else None
        threshold = getattr(self, "threshold_", None)
        labels = image_scores > threshold if threshold is not None else None
        gt = ds.labels if ds.has_labels else None
        gt_masks = None
        if ds.has_masks and all(m is not None for m in masks):
            gt_masks = np.concatenate([m.numpy() for m in masks])
        return Prediction(image_scores, anomaly_maps.astype(np.float32, copy=False), labels, paths, gt, gt_masks, self.info(),
                          threshold=None if threshold is None else float(threshold), original_sizes=sizes,
                          geometry=self.transform)

    @property
    def batch_size_for_predict(self) -> int:
        return int(getattr(self, "batch_size", 8))

    def _predict_batch(self, images: torch.Tensor) -> tuple:
        """(scores (B,), maps (B, H, W)), optionally with a third item {component name: (B,) array}."""
        raise NotImplementedError

    def _score_batch(self, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """(scores float64 (B,), maps float32 (B, H, W)) of one batch: `_predict_batch` without its score components
        (the route of every per-batch caller: streaming predict, serve, Ray, export parity)."""
        out = self._frames_out(images)
        return np.asarray(out[0], dtype=np.float64), np.asarray(out[1], dtype=np.float32)

    def _postprocess(self, scores: np.ndarray, maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Set-level step after all batches (e.g. ensemble normalisation); identity by default."""
        return scores, maps

    def calibrate(self, normal_data: DataLike, fpr: float = 0.01) -> "Detector":
        """Set `threshold_` from normal images only: the (1 − fpr) quantile of their image scores.

        Use held-out normal images (not the ones given to `fit`): their scores are biased low. n images resolve
        rates down to 1/(n+1) (the expected false-positive rate on new normals of a threshold at their highest
        score); asking for less warns and reports that rate. `calibration_` records n_images, fpr_requested,
        fpr_empirical (share of the calibration images above the threshold) and fpr_achievable.
        """
        check_fpr(fpr)
        self._check_fitted("calibrate")
        pred = self.predict(normal_data)
        if pred.gt_labels is not None and (pred.gt_labels == 1).any():
            raise ValueError("calibrate() takes normal images only; the data given holds anomalous samples")
        n = len(pred)
        if n < 2:
            raise DataError(f"calibrate() needs at least 2 normal images to set a threshold, got {n}"
                            + (f" ({pred.paths[0]})" if pred.paths else ""))
        self.threshold_ = float(np.quantile(pred.image_scores, 1.0 - fpr, method="higher"))
        achievable = 1.0 / (n + 1)
        if fpr > 0 and n < 1.0 / fpr:
            warnings.warn(f"{n} calibration images cannot resolve fpr={fpr:g} (that needs >= {int(np.ceil(1.0 / fpr))}); "
                          f"the lowest false-positive rate they support is about {achievable:.3g}", UserWarning, stacklevel=2)
        self.calibration_ = {"n_images": int(n), "fpr_requested": float(fpr),
                             "fpr_empirical": float(np.mean(pred.image_scores > self.threshold_)),
                             "fpr_achievable": float(achievable)}
        from .viz.files import map_scale  # overlays colour every map of this model on this one scale

        scale = map_scale(pred.anomaly_maps, self.threshold_)
        if scale is not None:
            self.calibration_["map_scale"] = scale
        return self

    def info(self) -> dict:
        """What produced a result: model name, device, random-init flag."""
        out = {"model": self.name, "device": str(self.device_), "random_init": self.random_init}
        if self.random_init:
            out["warning"] = "random-init backbone: scores show the pipeline works, not pretrained accuracy"
        return out

    # ---- persistence ----------------------------------------------------
    def _state_tensors(self) -> dict[str, torch.Tensor]:
        """Tensors that make up the fitted state (subclasses)."""
        return {}

    def _load_state(self, tensors: dict[str, torch.Tensor], extra: dict) -> None:
        """Restore fitted state from tensors and the JSON `extra` block (subclasses)."""

    def _state_extra(self) -> dict:
        """JSON-serialisable fitted state that is not a tensor (subclasses)."""
        return {}

    def save(self, path: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write `config.json` + `model.safetensors` into the directory `path`, atomically.

        `path` must not exist or be an empty folder; replacing a saved model needs `overwrite=True`, and a
        folder holding anything else is never replaced. A crash mid-save leaves the old model as it was.
        """
        from safetensors.torch import save_file

        from . import __version__

        self._check_fitted("save")
        path = Path(path)
        check_save_target(path, overwrite)
        config = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "anomalens_version": __version__,
            "model": self.name,
            "settings": self.get_params(),
            "threshold": getattr(self, "threshold_", None),
            "calibration": getattr(self, "calibration_", None),
            "state": {"geometry": getattr(self, "geometry_", None), "frame_size": getattr(self, "frame_size_", None),
                      **self._state_extra()},
            "random_init": self.random_init,
            "skipped": getattr(self, "skipped_", []),  # unreadable training images left out (anomalens fit)
        }
        tensors = {k: v.detach().cpu().contiguous() for k, v in self._state_tensors().items()}
        with atomic_path(path) as tmp:
            tmp.mkdir()
            save_file(tensors, str(tmp / TENSORS_FILE), metadata={"format": FORMAT_NAME})
            (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        return path


def _check_geometry_setting(model: "Detector") -> None:
    """geometry / tile / overlap / scale: one line at construction, naming why a method refuses a geometry."""
    from .data.geometry import check_geometry

    g = getattr(model, "geometry", None)
    if g is None:
        return
    check_geometry(g, getattr(model, "tile", None), getattr(model, "overlap", None), getattr(model, "scale", 1.0))
    if g != "auto" and g not in model.geometries:
        reason = getattr(model, "geometry_refusal", "")
        raise SettingError(f"{model.name} supports geometry {', '.join(('auto',) + tuple(model.geometries))}, not {g!r}"
                           + (f": {reason}" if reason else ""))


def check_fpr(fpr: float) -> None:
    """A false-positive rate must lie in [0, 1) (0 = above every calibration score)."""
    if not isinstance(fpr, (int, float)) or isinstance(fpr, bool) or not 0.0 <= fpr < 1.0:
        raise SettingError(f"fpr must be a number in [0, 1), got {fpr!r}")


def _param_names(cls: type) -> list[str]:
    return [k for k in inspect.signature(cls.__init__).parameters if k != "self"]


def load(path: str | os.PathLike, device: Optional[str] = None, **overrides: Any) -> Detector:
    """Load a model saved with `Detector.save`; tensors are memory-mapped, never unpickled.

    `overrides` replace saved settings that only change how the model runs (`settings.RUNTIME_SETTINGS`: batch_size,
    device, ...); unknown names and fit-time settings (which the fitted state already fixed) are an error.
    """
    from .registry import get_entry

    path = Path(path)
    cfg_path, tensor_path = path / CONFIG_FILE, path / TENSORS_FILE
    if not path.exists():
        raise ModelFormatError(f"no saved model at {path}")
    if not cfg_path.is_file() or not tensor_path.is_file():
        raise ModelFormatError(f"{path} is not an anomalens model directory (needs {CONFIG_FILE} and {TENSORS_FILE})")
    try:
        config = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelFormatError(f"corrupt {cfg_path}: {exc}") from exc
    if config.get("format") != FORMAT_NAME:
        raise ModelFormatError(f"{cfg_path} is not an anomalens model (format={config.get('format')!r})")
    version = config.get("format_version")
    if version != FORMAT_VERSION:
        raise ModelFormatError(
            f"{cfg_path} has format version {version!r}; this anomalens reads version {FORMAT_VERSION} (upgrade anomalens)"
        )
    entry = get_entry(config["model"])
    settings = dict(config.get("settings", {}))
    if "pretrained" in settings and "weights" not in settings:  # saved before the one `weights` spelling
        settings["weights"] = settings.pop("pretrained")
    if device is not None:
        settings["device"] = device
    unknown = sorted(set(overrides) - set(settings))
    if unknown:
        raise ModelFormatError(f"{entry.name} has no setting(s) {unknown}; valid: {sorted(settings)}")
    from .settings import check_runtime_overrides

    check_runtime_overrides(overrides, settings, "load()")
    check_settings(entry.cls, overrides)  # a bad override is the caller's, not the file's
    settings.update(overrides)
    try:
        model = entry.cls(**settings)
    except (SettingError, TypeError) as exc:
        raise ModelFormatError(f"{cfg_path}: {exc}") from exc
    try:
        tensors = load_safetensors_mmap(tensor_path)
    except (ValueError, OSError, KeyError) as exc:
        raise ModelFormatError(f"corrupt tensor file {tensor_path}: {exc}") from exc
    state = config.get("state", {})
    # the geometry resolved at fit (None: "auto" resolved per call); models saved before geometries existed: "paper"
    model.geometry_ = state.get("geometry", "paper")
    model.frame_size_ = state.get("frame_size")
    model._load_state(tensors, state)
    model.fitted_ = True
    model.threshold_ = config.get("threshold")
    model.calibration_ = config.get("calibration")
    model.skipped_ = config.get("skipped", [])
    return model


def _one_size(maps: list[np.ndarray], masks: list) -> tuple[list[np.ndarray], list]:
    """Batches of different sizes (a folder of mixed images) resized to the first batch's map size, so the
    prediction holds one (N, H, W) array; `Prediction.map_at_original_size` gives each image's own geometry."""
    from .data import resize_map

    size = maps[0].shape[-2:]
    out_maps, out_masks = [], []
    for m, k in zip(maps, masks):
        if m.shape[-2:] != size:
            flat = torch.from_numpy(np.ascontiguousarray(m)).reshape(-1, *m.shape[-2:])
            m = resize_map(flat, tuple(size)).reshape(*m.shape[:-2], *size).numpy()
            if k is not None:
                k = torch.nn.functional.interpolate(k[:, None].float(), size=tuple(size), mode="nearest")[:, 0] > 0.5
        out_maps.append(m)
        out_masks.append(k)
    return out_maps, out_masks


def _jsonable(v: Any) -> Any:
    if isinstance(v, tuple):
        return [_jsonable(x) for x in v]
    if isinstance(v, (list,)):
        return [_jsonable(x) for x in v]
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, torch.device):
        return str(v)
    return v
