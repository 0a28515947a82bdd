"""Quiet output (issue 19, item 5): no third-party noise on the console; the warnings that stay say what they concern."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from anomalens.cli import app
from conftest import tiny_patchcore

runner = CliRunner()
SRC = str(Path(__file__).resolve().parents[1] / "src")


def _cli(*args, cwd) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=SRC, ANOMALENS_PROGRESS="0")
    code = "import sys; from anomalens.cli.main import main; sys.argv = ['anomalens', *sys.argv[1:]]; main()"
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


def test_export_prints_no_exporter_warnings(tmp_path, synthetic_root):
    pytest.importorskip("onnx")
    model = tiny_patchcore().fit(str(synthetic_root / "weave" / "train" / "good")).save(tmp_path / "m")
    r = _cli("export", str(model), "-o", str(tmp_path / "m.onnx"), "--no-check", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "Constant folding" not in r.stderr and "Warning" not in r.stderr, r.stderr
    assert r.stderr.strip() == "", r.stderr


@pytest.mark.skipif(importlib.util.find_spec("accelerate") is not None, reason="with accelerate there is no notice")
def test_ldm_folder_loads_without_the_accelerate_notice(tmp_path, capfd):
    pytest.importorskip("diffusers")
    from anomalens.generation.components import build_tiny, load_diffusers_folder

    base = build_tiny()
    base.unet.save_pretrained(tmp_path / "unet")
    base.vae.save_pretrained(tmp_path / "vqvae")
    base.text_encoder.save_pretrained(tmp_path / "bert")
    base.tokenizer.save_pretrained(tmp_path / "tokenizer")
    capfd.readouterr()
    loaded = load_diffusers_folder(tmp_path)
    assert loaded.unet is not None
    err = capfd.readouterr().err
    assert "accelerate" not in err, err


def test_calibration_warnings_name_what_they_concern(synthetic_root, capsys):
    from anomalens.cli.common import calibrate_with_warnings

    det = tiny_patchcore().fit(str(synthetic_root / "weave" / "train" / "good"))
    calibrate_with_warnings(det, str(synthetic_root / "weave" / "test" / "good"), 0.01, context="weave")
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and "weave: " in err and "fpr=0.01" in err


def test_demo_defaults_give_no_warning(tmp_path):
    r = runner.invoke(app, ["demo", "--out", str(tmp_path / "d"), "--category", "disc", "--device", "cpu", "--random-init"])
    assert r.exit_code == 0, r.output
    assert "warning" not in r.output.lower(), r.output


def test_predict_ray_console_has_no_ray_internals(tmp_path, synthetic_root):
    pytest.importorskip("ray")
    pytest.importorskip("pyarrow")
    model = tiny_patchcore().fit(str(synthetic_root / "weave" / "train" / "good")).save(tmp_path / "m")
    r = _cli("predict", str(model), str(synthetic_root / "weave" / "test" / "good"), "-o", str(tmp_path / "o"),
             "--ray", "auto", "--device", "cpu", "--workers", "1", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    for noise in ("core_worker", "Token authentication is enabled", "Deprecat", "Warning"):
        assert noise not in r.stderr, r.stderr
