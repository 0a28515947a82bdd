"""CLI via typer's runner: every command, --help, one-line errors with exit code 2."""
from __future__ import annotations

import csv
import json

import pytest
from typer.testing import CliRunner

from anomalens.cli.app import app

runner = CliRunner()
TINY = ["--set", "backbone=resnet18", "--set", "weights=None", "--set", "resize=72", "--set", "crop=64", "--set", "coreset_ratio=0.5"]


@pytest.mark.parametrize("cmd", ["demo", "fit", "predict", "evaluate", "models"])
def test_help(cmd):
    r = runner.invoke(app, [cmd, "--help"])
    assert r.exit_code == 0 and "Usage" in r.output


def test_models_lists_patchcore():
    r = runner.invoke(app, ["models"])
    assert r.exit_code == 0 and "patchcore" in r.output


def test_demo_runs_patchcore_and_writes_outputs(tmp_path):
    r = runner.invoke(app, ["demo", "--out", str(tmp_path / "d"), "--category", "disc", "--n-train", "6", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "d" / "metrics.json").read_text())
    assert m["model"] == "patchcore" and "disc" in m["per_category"]
    assert 0.0 <= m["per_category"]["disc"]["metrics"]["image_auroc"] <= 1.0
    assert m["per_category"]["disc"]["threshold"] is not None  # calibrated on held-out normals
    assert list((tmp_path / "d" / "overlays" / "disc").glob("*.png"))
    assert "image_auroc" in r.output or "I-AUROC" in r.output


def test_fit_predict_evaluate_round_trip(tmp_path, synthetic_root):
    model_dir = tmp_path / "model"
    r = runner.invoke(app, ["fit", str(synthetic_root), "--dataset", "mvtec", "--category", "weave", "-o", str(model_dir), "--device", "cpu", *TINY])
    assert r.exit_code == 0, r.output
    assert "random-init" in r.output
    r = runner.invoke(app, ["predict", str(model_dir), str(synthetic_root / "weave" / "test" / "hole"), "-o", str(tmp_path / "p")])
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(open(tmp_path / "p" / "predictions.csv")))
    assert len(rows) == 2 and {"path", "score", "anomalous"} <= set(rows[0])
    assert len(list((tmp_path / "p" / "overlays").glob("*.png"))) == 2
    r = runner.invoke(app, ["predict", str(model_dir), str(synthetic_root / "weave" / "test" / "hole" / "*.png"), "-o", str(tmp_path / "q"), "--format", "json", "--no-overlays"])
    assert r.exit_code == 0, r.output
    assert len(json.loads((tmp_path / "q" / "predictions.json").read_text())["predictions"]) == 2
    r = runner.invoke(app, ["evaluate", str(synthetic_root), "--category", "weave", "--category", "disc", "-o", str(tmp_path / "e"),
                            "--shots", "4", "--device", "cpu", *TINY])
    assert r.exit_code == 0, r.output
    table = json.loads((tmp_path / "e" / "metrics.json").read_text())["metrics"]
    assert set(table) == {"weave", "disc", "mean"} and "aupro" in table["mean"]
    assert json.loads((tmp_path / "e" / "metrics.json").read_text())["shots"] == 4
    assert (tmp_path / "e" / "metrics.csv").read_text().startswith("category,image_auroc")


@pytest.mark.parametrize(
    "args,needle",
    [
        (["predict", "/no/such/model", "x.png"], "no saved model"),
        (["fit", "/no/such/dir", "-o", "/tmp/x"], "not found"),
        (["evaluate", "/no/such/root"], "not found"),
        (["fit", ".", "-o", "/tmp/x", "--set", "oops"], "key=value"),
        (["demo", "--device", "cuda:7"], "cuda"),
    ],
)
def test_user_errors_are_one_line_exit_2(args, needle):
    r = runner.invoke(app, args)
    assert r.exit_code == 2
    assert needle in r.output
    assert "Traceback" not in r.output
