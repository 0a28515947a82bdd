"""Run-time vs fit-time settings (issue 19, item 7): predict / serve / load() refuse a fit-time override."""
from __future__ import annotations

import pytest
from typer.testing import CliRunner

from anomalens.cli import app
from anomalens.settings import RUNTIME_SETTINGS

runner = CliRunner()


def test_stream_signature_and_overrides_share_one_runtime_set():
    from anomalens.deploy.stream import RUNTIME_SETTINGS as STREAM

    assert set(STREAM) == set(RUNTIME_SETTINGS)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, synthetic_root):
    from conftest import tiny_patchcore

    det = tiny_patchcore().fit(str(synthetic_root / "weave" / "train" / "good"))
    return det.save(tmp_path_factory.mktemp("rt") / "m")


@pytest.mark.parametrize("command", ["predict", "serve"])
def test_cli_refuses_a_fit_time_setting_in_one_line(command, model_dir, tmp_path):
    args = [command, str(model_dir)] + (["x.png", "-o", str(tmp_path / "o")] if command == "predict" else []) + \
        ["--set", "coreset_ratio=0.5", "--device", "cpu"]
    r = runner.invoke(app, args)
    assert r.exit_code == 2, r.output
    line = r.output.strip()
    assert len(line.splitlines()) == 1 and "coreset_ratio" in line and "fit-time" in line
    assert all(k in line for k in ("batch_size", "device"))
    assert not (tmp_path / "o").exists()


def test_load_refuses_a_fit_time_override_and_takes_a_runtime_one(model_dir):
    import anomalens
    from anomalens.errors import SettingError

    with pytest.raises(SettingError, match="coreset_ratio=0.5") as info:  # names the saved value
        anomalens.load(model_dir, coreset_ratio=0.9)
    assert "fit-time" in str(info.value)
    assert anomalens.load(model_dir, batch_size=3).batch_size == 3
