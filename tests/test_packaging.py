"""The `test` extra installs what the tests import: a test that needs an optional package must not pass only on a
machine where somebody installed that package by hand (issue 24)."""
from __future__ import annotations

import os
import re
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
NOT_TESTED_EXTRAS = {"test", "bench", "docs"}  # bench: anomalib, for benchmarks/ only; docs: the site build in .ci/run


def _extras() -> dict[str, list[str]]:
    return tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"]


def _name(req: str) -> str:
    return re.split(r"[ ;<>=!~\[(]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_test_extra_covers_every_optional_extra():
    extras = _extras()
    named = set()
    for req in extras["test"]:
        m = re.fullmatch(r"anomalens\[([^\]]+)\]", req.strip())
        if m:
            named |= {e.strip() for e in m.group(1).split(",")}
    missing = set(extras) - NOT_TESTED_EXTRAS - named
    assert not missing, f"the test extra does not install the extras {sorted(missing)}: their tests would skip or fail"


@pytest.mark.skipif(os.environ.get("CI", "").lower() not in {"1", "true"}, reason="CI only: a developer may test a subset")
def test_ci_has_every_package_of_the_test_extra():
    """Under CI every package the test extra pulls is installed, so no importorskip hides a missing install step."""
    extras = _extras()
    wanted = {_name(r) for r in extras["test"] if not r.strip().startswith("anomalens[")}
    for req in extras["test"]:
        m = re.fullmatch(r"anomalens\[([^\]]+)\]", req.strip())
        if m:
            for e in m.group(1).split(","):
                wanted |= {_name(r) for r in extras[e.strip()]}
    absent = []
    for name in sorted(wanted):
        try:
            metadata.version(name)
        except metadata.PackageNotFoundError:
            absent.append(name)
    assert not absent, f"installed without {absent}: run the README's test command (pip install -e '.[test]')"
