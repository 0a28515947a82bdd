"""Every built-in model's name, description, paper and settings read from the source files, without importing torch.

`anomalens models` uses this so that it answers in well under a second; `tests/test_cli.py` checks it against the
imported registry, so the two can never disagree.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MODELS_DIR = Path(__file__).parent / "models"


@dataclass(frozen=True)
class CatalogueEntry:
    """What `anomalens models` shows of one detector."""

    name: str
    description: str = ""
    paper: str = ""
    settings: dict[str, Any] = field(default_factory=dict)
    #: each setting's annotation as written in `__init__` (source text) and the class's `setting_ranges`, so the CLI
    #: checks --set values before torch is imported (the model checks them again when built)
    annotations: dict[str, str] = field(default_factory=dict)
    ranges: dict[str, str] = field(default_factory=dict)


def _literal(node: ast.AST) -> Any:
    try:
        return ast.literal_eval(node)
    except ValueError:
        return ast.unparse(node)


def _init_defaults(cls: ast.ClassDef) -> dict[str, Any]:
    for item in cls.body:
        if isinstance(item, ast.FunctionDef) and item.name == "__init__":
            args = item.args.args[1:]
            defaults = dict(zip([a.arg for a in args[len(args) - len(item.args.defaults):]], item.args.defaults))
            kw = {a.arg: d for a, d in zip(item.args.kwonlyargs, item.args.kw_defaults) if d is not None}
            return {k: _literal(v) for k, v in (defaults | kw).items()}
    return {}


def _init_annotations(cls: ast.ClassDef) -> dict[str, str]:
    for item in cls.body:
        if isinstance(item, ast.FunctionDef) and item.name == "__init__":
            args = item.args.args[1:] + item.args.kwonlyargs
            return {a.arg: ast.unparse(a.annotation) for a in args if a.annotation is not None}
    return {}


def _class_ranges(cls: ast.ClassDef) -> dict[str, str]:
    for item in cls.body:
        target = item.target if isinstance(item, ast.AnnAssign) else (item.targets[0] if isinstance(item, ast.Assign) else None)
        if getattr(target, "id", None) == "setting_ranges" and item.value is not None:
            value = _literal(item.value)
            return value if isinstance(value, dict) else {}
    return {}


#: ranges every detector inherits (anomalens.detector.Detector.setting_ranges; tests/test_fast_errors.py holds them equal)
BASE_RANGES = {"batch_size": "[1, inf)", "scale": "(0, 4]"}


def _entries_in(path: Path) -> list[CatalogueEntry]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    out = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.ClassDef):
            continue
        for deco in node.decorator_list:
            if isinstance(deco, ast.Call) and getattr(deco.func, "id", getattr(deco.func, "attr", "")) == "register_model":
                kw = {k.arg: _literal(k.value) for k in deco.keywords if k.arg}
                name = _literal(deco.args[0]) if deco.args else kw.get("name", node.name.lower())
                out.append(CatalogueEntry(name, kw.get("description", ""), kw.get("paper", ""), _init_defaults(node),
                                          _init_annotations(node), BASE_RANGES | _class_ranges(node)))
    return out


def model_catalogue() -> list[CatalogueEntry]:
    """The built-in detectors, sorted by name, read from `anomalens/models/**.py` (no torch import)."""
    found = []
    for path in sorted(MODELS_DIR.rglob("*.py")):
        if "register_model(" in path.read_text(encoding="utf-8"):
            found += _entries_in(path)
    return sorted(found, key=lambda e: e.name)
