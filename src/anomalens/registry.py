"""Model registry and factory by string, as timm and open_clip do: `create("patchcore", backbone=...)`."""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Type

from .errors import AnomalensError, UnknownModelError


@dataclass(frozen=True)
class ModelEntry:
    """A registered detector: class, one-line description, paper, and its settings' defaults."""

    name: str
    cls: type
    description: str = ""
    paper: str = ""
    pretrained: dict = field(default_factory=dict)

    @property
    def defaults(self) -> dict[str, Any]:
        """Constructor defaults (the spec's contract)."""
        sig = inspect.signature(self.cls.__init__)
        return {k: p.default for k, p in sig.parameters.items() if k != "self" and p.default is not inspect.Parameter.empty}


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(name: str, description: str = "", paper: str = "", pretrained: dict | None = None) -> Callable[[Type], Type]:
    """Class decorator adding a detector to the registry under `name`."""

    def wrap(cls: Type) -> Type:
        if name in _REGISTRY and _REGISTRY[name].cls is not cls:
            raise AnomalensError(f"model name {name!r} is already registered by {_REGISTRY[name].cls.__name__}")
        cls.name = name
        _REGISTRY[name] = ModelEntry(name, cls, description, paper, dict(pretrained or {}))
        return cls

    return wrap


def _ensure_builtin() -> None:
    from . import models  # noqa: F401  (registers the built-in detectors)


def get_entry(name: str) -> ModelEntry:
    """The registry entry of `name`, with a clear error listing known names."""
    _ensure_builtin()
    key = name.lower().replace("-", "_")
    if key not in _REGISTRY:
        raise UnknownModelError(f"unknown model {name!r}; available: {', '.join(sorted(_REGISTRY)) or 'none'}")
    return _REGISTRY[key]


def list_models() -> list[str]:
    """Names of every registered detector."""
    _ensure_builtin()
    return sorted(_REGISTRY)


def model_entries() -> list[ModelEntry]:
    """Every registry entry, sorted by name."""
    _ensure_builtin()
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


def create(name: str, **settings: Any):
    """Build a detector by name; unknown settings are an error naming the valid ones."""
    entry = get_entry(name)
    valid = set(entry.defaults) | {
        k for k, p in inspect.signature(entry.cls.__init__).parameters.items() if k != "self"
    }
    bad = sorted(set(settings) - valid)
    if "pretrained" in bad and "weights" in valid:
        raise AnomalensError(f"{entry.name}: the weights setting is spelled weights= (None = seeded random init, a tag, "
                             "or a local file); CLI: --set weights=...")
    if bad:
        raise AnomalensError(f"{entry.name} has no setting(s) {bad}; valid: {sorted(valid)}")
    return entry.cls(**settings)
