"""No command replaces a user's file unasked (issue 19, item 1): one rule, `anomalens.outputs`, for every command."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from anomalens.cli import app
from anomalens.outputs import MANIFEST, check_outputs, claim, guarded, start_writing, written_by_us

runner = CliRunner()

#: commands that write nothing a user could own (the walk below fails on a command in neither list)
NON_WRITERS = {"models": "prints a table", "serve": "answers HTTP requests, writes no file",
               "datasets download": "downloads into --root (checksummed archive names; not walked here)"}


def all_commands() -> list[str]:
    """Every command of `anomalens --help`, sub-commands as 'group command'."""
    out = []

    def walk(cmd, prefix: str) -> None:
        if hasattr(cmd, "commands"):  # a group (typer may bring its own click)
            for name, sub in cmd.commands.items():
                walk(sub, f"{prefix} {name}".strip())
        else:
            out.append(prefix)

    walk(get_command(app), "")
    return sorted(out)


@pytest.fixture(scope="module")
def fitted_model(tmp_path_factory, synthetic_root):
    from conftest import tiny_patchcore

    from anomalens.data import MVTecAD

    det = tiny_patchcore()
    det.fit(MVTecAD(synthetic_root, "weave", "train"))
    return det.save(tmp_path_factory.mktemp("model") / "m")


def writer_cases(tmp: Path, root: Path, model: Path) -> dict[str, tuple[list[str], Path]]:
    """command -> (arguments that would write into a user's folder, the user's file it would replace)."""
    u = tmp / "user"
    imgs = str(root / "weave" / "test" / "good")
    tiny = ["--set", "backbone=resnet18", "--set", "weights=None", "--set", "coreset_ratio=0.5", "--device", "cpu"]
    run_dir = tmp / "run"
    run_dir.mkdir()
    (run_dir / "metrics.json").write_text(json.dumps({"model": "patchcore", "metrics": {}}))
    return {
        "fit": (["fit", str(root / "weave" / "train" / "good"), "-o", str(u / "model"), *tiny], u / "model" / "notes.txt"),
        "predict": (["predict", str(model), imgs, "-o", str(u / "p"), "--device", "cpu"], u / "p" / "predictions.csv"),
        "evaluate": (["evaluate", str(root), "--category", "weave", "-o", str(u / "e"), *tiny], u / "e" / "metrics.csv"),
        "demo": (["demo", "--out", str(u / "d"), "--category", "weave", "--n-train", "4", "--device", "cpu",
                  "--random-init"], u / "d" / "metrics.json"),
        "benchmark": (["benchmark", "--dataset", "mvtec", "--root", str(root), "--category", "weave", "-o", str(u / "b"),
                       "--device", "cpu"], u / "b" / "summary.csv"),
        "report": (["report", str(run_dir), "-o", str(u / "mydocs" / "thesis.docx")], u / "mydocs" / "thesis.docx"),
        "export": (["export", str(model), "-o", str(u / "x" / "model.onnx"), "--no-check"], u / "x" / "model.json"),
        "train clipad": (["train", "clipad", str(root), "--dataset", "mvtec", "-o", str(u / "t"), "--epochs", "1",
                          "--device", "cpu"], u / "t" / "training.json"),
        "train-generator": (["train-generator", str(root), "--category", "weave", "--defect", "scratch", "-o", str(u / "g"),
                             "--config", "tiny", "--steps", "1", "--device", "cpu"], u / "g" / "model.json"),
        "generate": (["generate", str(u / "g"), imgs, "-n", "1", "-o", str(u / "gen"), "--device", "cpu"],
                     u / "gen" / "test" / "scratch" / "000.png"),
        "evaluate-generator": (["evaluate-generator", str(u / "g"), str(root), "-o", str(u / "ge"), "-n", "1",
                                "--epochs", "1", "--device", "cpu"], u / "ge" / "generator_eval.json"),
    }


def test_every_command_leaves_a_users_files_alone(tmp_path, synthetic_root, fitted_model):
    cases = writer_cases(tmp_path, synthetic_root, fitted_model)
    assert set(all_commands()) == set(cases) | set(NON_WRITERS), "a new command: add it to writer_cases or NON_WRITERS"
    for name, (args, user_file) in cases.items():
        user_file.parent.mkdir(parents=True, exist_ok=True)
        payload = f"the user's own {name} file, not anomalens output\n".encode()
        user_file.write_bytes(payload)
        r = runner.invoke(app, args)
        assert r.exit_code == 2, (name, r.output)
        # the refusal names the file, or the entry of the output folder that holds it
        assert any(str(p) in r.output for p in [user_file, *list(user_file.parents)[:3]]), (name, r.output)
        assert "no anomalens run recorded writing it" in r.output or "not an anomalens model" in r.output, (name, r.output)
        assert len(r.output.strip().splitlines()) == 1, (name, r.output)
        assert user_file.read_bytes() == payload, name


def test_report_replaces_a_users_file_only_with_force(tmp_path, fitted_model):
    run_dir = fitted_model
    doc = tmp_path / "mydocs" / "thesis.docx"
    doc.parent.mkdir()
    doc.write_bytes(b"PK\x03\x04 my thesis")
    r = runner.invoke(app, ["report", str(run_dir), "-o", str(doc)])
    assert r.exit_code == 2 and str(doc) in r.output and doc.read_bytes() == b"PK\x03\x04 my thesis"
    r = runner.invoke(app, ["report", str(run_dir), "-o", str(doc), "--force"])
    assert r.exit_code == 0, r.output
    assert doc.read_text().lstrip().lower().startswith("<!doctype html")
    # now anomalens wrote it: a second report replaces its own file without --force
    r = runner.invoke(app, ["report", str(run_dir), "-o", str(doc)])
    assert r.exit_code == 0, r.output


def test_a_second_run_replaces_its_own_outputs(tmp_path, synthetic_root, fitted_model):
    out = tmp_path / "p"
    imgs = str(synthetic_root / "weave" / "test" / "good")
    for extra in ([], ["--no-resume"]):
        r = runner.invoke(app, ["predict", str(fitted_model), imgs, "-o", str(out), "--device", "cpu", *extra])
        assert r.exit_code == 0, r.output
    assert written_by_us(out / "predictions.csv") and written_by_us(out / "run.json")
    assert any((out / "overlays").glob("*.png"))


def test_guard_refuses_at_write_time_too(tmp_path):
    """A write the upfront check did not foresee is refused by anomalens.io itself under a command."""
    from anomalens.errors import OutputExistsError
    from anomalens.io import write_json

    user = tmp_path / "notes.json"
    user.write_text("mine")
    with guarded(force=False), pytest.raises(OutputExistsError, match="notes.json"):
        write_json(user, {"a": 1})
    assert user.read_text() == "mine"
    write_json(tmp_path / "ours.json", {"a": 1})  # outside a command: library behaviour, nothing recorded
    assert not (tmp_path / MANIFEST).exists()
    with guarded(force=False):
        write_json(tmp_path / "new.json", {"a": 1})
        assert written_by_us(tmp_path / "new.json")
        write_json(tmp_path / "new.json", {"a": 2})  # its own file: replaced without --force
        with pytest.raises(OutputExistsError, match="ours.json"):  # written outside any command: not recorded
            write_json(tmp_path / "ours.json", {"a": 2})
    assert json.loads((tmp_path / "new.json").read_text()) == {"a": 2}


def test_claimed_folders_and_forced_writes(tmp_path):
    with guarded(force=False):
        claim(files=[tmp_path / "a" / "metrics.json"], dirs=[tmp_path / "a" / "overlays"])
        assert not (tmp_path / "a").exists()  # nothing written yet: nothing marked
        start_writing()
        (tmp_path / "a" / "overlays" / "x.png").write_bytes(b"1")
        check_outputs(files=[tmp_path / "a" / "metrics.json", tmp_path / "a" / "overlays" / "x.png"])
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "photo.png").write_bytes(b"user")
    from anomalens.errors import OutputExistsError

    with pytest.raises(OutputExistsError, match="photo.png"):
        check_outputs(dirs=[tmp_path / "b"], force=False)
    check_outputs(dirs=[tmp_path / "b"], force=True)


def test_a_command_that_fails_on_its_arguments_leaves_nothing_behind(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for args in (["predict", "/no/such/model", "x.png"], ["evaluate", "/no/such/root"],
                 ["report", "/no/such/run", "-o", "sub/r.html"]):
        assert runner.invoke(app, args).exit_code == 2
    assert list(tmp_path.iterdir()) == []
