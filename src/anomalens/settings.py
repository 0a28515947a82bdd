"""Model settings checked once, when a detector is built: types from the `__init__` annotations, ranges declared
next to the model (`setting_ranges = {"coreset_ratio": "(0, 1]"}`), so every model — and every future one — gets a
one-line error naming the setting and what it expects, never a traceback deep in `fit`."""
from __future__ import annotations

import collections.abc
import functools
import numbers
import os
import types
import typing
from typing import Any, Literal, Union

from .errors import SettingError

_SEQUENCES = (collections.abc.Sequence, list, tuple)


@functools.lru_cache(maxsize=None)
def _hints(cls: type) -> dict[str, Any]:
    import inspect

    init = inspect.unwrap(cls.__init__)
    try:
        return typing.get_type_hints(init)
    except Exception:  # an annotation that cannot be resolved: check nothing rather than fail
        return {}


def conforms(value: Any, tp: Any) -> bool:
    """Whether `value` is an instance of the annotation `tp` (Optional/Union/Literal/Sequence[X] understood;
    ints pass as floats, paths as strings)."""
    if tp is Any:
        return True
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Union or (hasattr(types, "UnionType") and origin is types.UnionType):
        return any(conforms(value, a) for a in args)
    if tp is type(None) or tp is None:
        return value is None
    if origin is Literal:
        return value in args
    if tp is bool:
        return isinstance(value, bool) or type(value).__name__ == "bool_"
    if tp is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, (str, os.PathLike)) or type(value).__name__ == "device"  # paths; torch.device
    if tp in _SEQUENCES or origin in _SEQUENCES:
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            return False
        if not args:
            return True
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            return len(args) == len(value) and all(conforms(v, a) for v, a in zip(value, args))
        return all(conforms(v, args[0]) for v in value)
    if origin is not None and isinstance(origin, type):
        return isinstance(value, origin)
    if isinstance(tp, type):
        return isinstance(value, tp)
    return True  # an annotation form we do not model: do not block


def describe(tp: Any) -> str:
    """Human wording of an annotation: 'a number', 'a list of int or None', 'one of 'l2', 'squared_l2''."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Union or (hasattr(types, "UnionType") and origin is types.UnionType):
        parts = [describe(a) for a in args if a is not type(None)]
        return " or ".join(parts + (["None"] if type(None) in args else []))
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    names = {int: "an integer", float: "a number", str: "a string", bool: "true/false"}
    if tp in names:
        return names[tp]
    if tp in _SEQUENCES or origin in _SEQUENCES:
        plural = {int: "integers", float: "numbers", str: "strings", bool: "true/false values"}
        inner = plural.get(args[0], describe(args[0])) if args and args[0] is not Ellipsis else ""
        return f"a list of {inner}" if inner else "a list"
    return getattr(tp, "__name__", str(tp))


def _in_range(value: Any, spec: str) -> bool:
    lo_br, hi_br = spec.strip()[0], spec.strip()[-1]
    lo, hi = (float(v) for v in spec.strip()[1:-1].split(","))
    above = value >= lo if lo_br == "[" else value > lo
    below = value <= hi if hi_br == "]" else value < hi
    return bool(above and below)


def setting_ranges(cls: type) -> dict[str, str]:
    """Every `setting_ranges` declared on `cls` and its bases (subclasses win)."""
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        out.update(klass.__dict__.get("setting_ranges", {}))
    return out


def check_settings(cls: type, values: dict[str, Any]) -> None:
    """Raise SettingError on the first setting of `values` whose type or range does not fit `cls`."""
    hints, ranges = _hints(cls), setting_ranges(cls)
    name = getattr(cls, "name", cls.__name__)
    for key, value in values.items():
        tp = hints.get(key)
        if tp is not None and not conforms(value, tp):
            raise SettingError(f"{name}: setting {key}={value!r} must be {describe(tp)} (got {type(value).__name__})")
        spec = ranges.get(key)
        if spec is not None and isinstance(value, numbers.Real) and not isinstance(value, bool) and not _in_range(value, spec):
            raise SettingError(f"{name}: setting {key}={value!r} is out of range; expected a value in {spec}")


#: settings that change how a saved model runs, not what it computes: the only ones predict / serve / `load()` may
#: override (everything else was fixed when the model was fitted). anomalens.deploy.stream keeps the same set for
#: its run signature (tests/test_settings_runtime.py holds them equal).
RUNTIME_SETTINGS = frozenset({"device", "batch_size", "feature_dir", "cache_dir", "token_cache"})


def check_runtime_overrides(overrides, saved: "dict | None" = None, where: str = "predict / serve") -> None:
    """Refuse (SettingError, one line) an override of a fit-time setting: it would be accepted and change nothing
    (the fitted state was built with the saved value), or silently change what a calibrated threshold means."""
    fit_time = sorted(k for k in overrides if k not in RUNTIME_SETTINGS)
    if not fit_time:
        return
    key = fit_time[0]
    allowed = ", ".join(sorted(RUNTIME_SETTINGS & set(saved)) if saved else sorted(RUNTIME_SETTINGS))
    if saved and key not in saved:
        raise SettingError(f"the saved model has no setting {key}; {where} can change the run-time settings {allowed}")
    was = f" (the model was fitted with {key}={saved[key]!r})" if saved else ""
    raise SettingError(f"{key} is a fit-time setting{was}; {where} can only change the run-time settings {allowed} "
                       f"(refit with `anomalens fit --set {key}=...` to change it)")


def saved_settings(model_dir) -> "dict | None":
    """The settings in a saved model's config.json (read as JSON: no torch), or None when unreadable."""
    import json
    from pathlib import Path

    try:
        s = json.loads((Path(model_dir) / "config.json").read_text()).get("settings")
        return s if isinstance(s, dict) else None
    except (OSError, ValueError, AttributeError):
        return None
