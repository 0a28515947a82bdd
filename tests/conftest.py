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
    """The real assets folder, or skip."""
    if not ASSETS.is_dir():
        pytest.skip(f"real assets not found at {ASSETS}")
    return ASSETS


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
