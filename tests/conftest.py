"""Shared fixtures: a small synthetic dataset, the real assets folder (skip when absent), quiet progress bars."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from anomalens.progress import set_progress

ASSETS = Path(os.environ.get("ANOMALENS_ASSETS", Path(__file__).resolve().parents[2] / "shared" / "assets"))

set_progress(False)
torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own ANOMALENS_HOME so no test sees another's cached weights."""
    monkeypatch.setenv("ANOMALENS_HOME", str(tmp_path_factory.mktemp("home")))


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """A small deterministic MVTec-layout dataset (3 categories, 12 train, 4 good + 2 per defect in test)."""
    from anomalens.data.synthetic import make_synthetic_dataset

    return make_synthetic_dataset(tmp_path_factory.mktemp("synthetic"), n_train=12, n_test_good=4, n_test_per_defect=2, seed=0)


@pytest.fixture(scope="session")
def assets() -> Path:
    """The real assets folder, or skip. Only for tests marked `integration` (checked in pytest_runtest_setup)."""
    if not ASSETS.is_dir():
        pytest.skip(f"real assets not found at {ASSETS}")
    return ASSETS


def pytest_runtest_setup(item):
    """A test that reaches the real assets (the `assets` fixture, directly or through another fixture) must carry
    the `integration` marker, so the count below and `-m "not integration"` see it."""
    if "assets" in getattr(item, "fixturenames", ()) and item.get_closest_marker("integration") is None:
        pytest.fail(f"{item.nodeid} uses the real assets (../shared/assets) but is not marked "
                    "@pytest.mark.integration", pytrace=False)


def pytest_terminal_summary(terminalreporter):
    """One line in every run's log: how many integration tests (real assets) ran and how many were skipped, so a
    skipped real-weights parity test is visible, e.g. 'integration tests: 0 ran, 9 skipped (real assets not found ...)'."""
    ran, skipped, reasons = set(), set(), set()
    for kind in ("passed", "failed", "error", "skipped"):
        for rep in terminalreporter.stats.get(kind, []):
            if "integration" not in getattr(rep, "keywords", {}):
                continue
            if kind == "skipped":
                skipped.add(rep.nodeid)
                if isinstance(rep.longrepr, tuple) and len(rep.longrepr) == 3:
                    reasons.add(str(rep.longrepr[2]).removeprefix("Skipped: "))
            elif rep.when == "call" or kind in ("failed", "error"):
                ran.add(rep.nodeid)
    why = f" ({'; '.join(sorted(reasons))})" if reasons else ""
    deselected = [i for i in terminalreporter.stats.get("deselected", [])
                  if hasattr(i, "get_closest_marker") and i.get_closest_marker("integration")]
    also = f", {len(deselected)} deselected" if deselected else ""
    terminalreporter.write_line(f"integration tests: {len(ran - skipped)} ran, {len(skipped)} skipped{also}{why}")


def tiny_patchcore(**kw):
    """A fast random-init PatchCore for unit tests (ResNet-18, 72 → 64 px crop whatever the data: geometry="paper")."""
    import anomalens

    settings = dict(backbone="resnet18", weights=None, geometry="paper", resize=72, crop=64, coreset_ratio=0.5, batch_size=4,
                    device="cpu")
    settings.update(kw)
    return anomalens.create("patchcore", **settings)


def mapping_of(address: int) -> str:
    """The file behind the memory mapping that holds `address` ('' for anonymous memory), from /proc/self/maps."""
    for line in open("/proc/self/maps"):
        parts = line.split()
        lo, hi = (int(v, 16) for v in parts[0].split("-"))
        if lo <= address < hi:
            return parts[5] if len(parts) > 5 else ""
    return ""


def fail_swap(monkeypatch, target) -> list:
    """Make `anomalens.io.atomic_path`'s swap onto `target` fail: the rename of the finished temporary payload onto
    `target` raises OSError (for a folder: the second rename, after the old one was moved aside). Every rename
    atomic_path makes is recorded in the returned list as (src, dst)."""
    import anomalens.io as aio

    target = Path(target)
    calls: list = []

    class _Os:
        def __getattr__(self, name):
            return getattr(os, name)

        @staticmethod
        def replace(src, dst):
            calls.append((Path(src), Path(dst)))
            if Path(src).name == "payload" and Path(dst) == target:
                raise OSError(f"injected: rename onto {dst} failed")
            return os.replace(src, dst)

    monkeypatch.setattr(aio, "os", _Os())
    return calls


def tmp_debris(folder) -> list:
    """atomic_path's temporary siblings (.NAME.*.tmp) left anywhere under `folder`."""
    return sorted(str(p) for p in Path(folder).rglob(".*.tmp"))
