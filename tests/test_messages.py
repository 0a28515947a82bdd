"""Messages that are true (issue 19, item 6): literal text through rich, help that matches the code."""
from __future__ import annotations

import pytest
from typer.testing import CliRunner

from anomalens.cli import app

runner = CliRunner()


def test_flags_show_no_bool_metavar():
    for args in (["--help"], ["predict", "--help"], ["fit", "--help"], ["evaluate", "--help"]):
        r = runner.invoke(app, args, terminal_width=200)
        assert r.exit_code == 0 and "--help" in r.output
        assert "<bool>" not in r.output and "BOOLEAN" not in r.output, args


def test_mask_geometry_help_matches_the_code():
    from anomalens.evaluation import OFFICIAL_MASK_RULES

    text = " ".join(runner.invoke(app, ["evaluate", "--help"], terminal_width=400).output.split())
    rule = {"eq255": "== 255", "eq1": "== 1", "gt0": "> 0"}
    assert f"then {rule[OFFICIAL_MASK_RULES['mvtec']]} on MVTec AD" in text.replace("│ ", "").replace(" │", "")
    assert f"{rule[OFFICIAL_MASK_RULES['visa']]} on VisA" in text.replace("│ ", "").replace(" │", "")


def test_bracketed_text_survives_in_errors_and_warnings(tmp_path, capsys):
    r = runner.invoke(app, ["report", str(tmp_path / "run[1]")])
    assert r.exit_code == 2 and "run[1]" in r.output
    from anomalens.cli.common import warn

    warn("pip install 'anomalens[generation]'")
    assert "anomalens[generation]" in capsys.readouterr().err


def test_evaluate_generator_prints_the_install_hint_intact(tmp_path, monkeypatch):
    import anomalens.generation.evaluate as ev

    hint = "not computed: IS needs torch-fidelity: pip install 'anomalens[generation]'"
    rep = {"inception_score": hint, "ic_lpips": 0.25, "defect": "hazelnut/crack",
           "downstream": {"epochs": 1, "best_epoch": 1, "clean": {"iou": 0.5}, "paper": {"iou": 0.5}}}
    monkeypatch.setattr(ev, "evaluate_generator", lambda *a, **kw: rep)
    (tmp_path / "g").mkdir()
    r = runner.invoke(app, ["evaluate-generator", str(tmp_path / "g"), str(tmp_path), "-o", str(tmp_path / "o")],
                      terminal_width=300)
    assert r.exit_code == 0, r.output
    assert "pip install 'anomalens[generation]'" in r.output


def test_foreign_predictions_csv_names_no_missing_run_json(tmp_path):
    from anomalens.deploy.stream import RUN_FILE, ResultLog
    from anomalens.errors import DataError

    (tmp_path / "predictions.csv").write_text("path,score\nmine.png,1\n")
    with pytest.raises(DataError) as info:
        ResultLog(tmp_path / "predictions.csv", {"model": "x"}, resume=True)
    msg = str(info.value)
    assert str(tmp_path / "predictions.csv") in msg
    assert f"see {tmp_path / RUN_FILE}" not in msg and not (tmp_path / RUN_FILE).exists()
