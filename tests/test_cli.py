"""CLI via typer's runner: every command, --help, one-line errors with exit code 2."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from anomalens.cli import app

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


def test_help_and_models_do_not_import_torch():
    """The CLI's --help, --version and `models` answer without loading torch (the cause of 5-6 s start-up)."""
    import subprocess
    import sys

    code = ("import sys; from typer.testing import CliRunner; from anomalens.cli import app; r = CliRunner();"
            "outs = [r.invoke(app, a) for a in (['--help'], ['--version'], ['models'])];"
            "assert all(o.exit_code == 0 for o in outs), [o.output for o in outs];"
            "print('torch' in sys.modules, 'open_clip' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]


def test_version_flag():
    import anomalens

    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0 and anomalens.__version__ in r.output


def test_models_catalogue_equals_registry():
    """`anomalens models` reads settings from source; they must equal the imported registry's defaults."""
    from anomalens.catalogue import model_catalogue
    from anomalens.registry import model_entries

    norm = lambda d: {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}  # noqa: E731
    cat = {e.name: e for e in model_catalogue()}
    reg = {e.name: e for e in model_entries()}
    assert set(cat) == set(reg)
    for name, e in reg.items():
        assert norm(cat[name].settings) == norm(e.defaults), name
        assert cat[name].description == e.description
    r = runner.invoke(app, ["models", "patchcore"])
    assert r.exit_code == 0 and "coreset_ratio" in r.output and "winclip" not in r.output


def test_progress_off_when_piped(monkeypatch):
    from anomalens import progress

    monkeypatch.delenv("ANOMALENS_PROGRESS", raising=False)
    monkeypatch.setattr(progress, "_enabled", None)
    monkeypatch.setattr("sys.stderr", __import__("io").StringIO())
    assert progress.progress_enabled() is False
    monkeypatch.setenv("ANOMALENS_PROGRESS", "1")
    assert progress.progress_enabled() is True


def test_predict_takes_threshold_and_settings(tmp_path, synthetic_root):
    model_dir = tmp_path / "model"
    r = runner.invoke(app, ["fit", str(synthetic_root), "--dataset", "mvtec", "--category", "weave", "-o", str(model_dir), "--device", "cpu", *TINY])
    assert r.exit_code == 0, r.output
    imgs = str(synthetic_root / "weave" / "test")
    r = runner.invoke(app, ["predict", str(model_dir), imgs, "-o", str(tmp_path / "a"), "--no-overlays", "--threshold", "-1e9",
                            "--set", "batch_size=3"])
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(open(tmp_path / "a" / "predictions.csv")))
    assert rows and all(row["anomalous"] == "True" for row in rows)   # every score is above -1e9
    assert all(row["random_init"] == "True" for row in rows)
    r = runner.invoke(app, ["predict", str(model_dir), imgs, "-o", str(tmp_path / "b"), "--no-overlays", "--threshold", "1e9"])
    assert all(row["anomalous"] == "False" for row in csv.DictReader(open(tmp_path / "b" / "predictions.csv")))
    r = runner.invoke(app, ["predict", str(model_dir), imgs, "-o", str(tmp_path / "c"), "--set", "no_such=1"])
    assert r.exit_code == 2 and "no_such" in r.output


# ---- issue 10: a new user's first hour -------------------------------------------------------------------------
def _fit_args(synthetic_root, out, *extra):
    return ["fit", str(synthetic_root), "--dataset", "mvtec", "--category", "weave", "-o", str(out), "--device", "cpu", *TINY, *extra]


def test_fit_never_replaces_a_users_folder_and_needs_force_for_a_model(tmp_path, synthetic_root):
    user = tmp_path / "work"
    user.mkdir()
    (user / "img.png").write_bytes(b"training image")
    r = runner.invoke(app, _fit_args(synthetic_root, user, "--force"))
    assert r.exit_code == 2 and "not an anomalens model" in r.output and "Traceback" not in r.output
    assert [p.name for p in user.iterdir()] == ["img.png"] and (user / "img.png").read_bytes() == b"training image"
    model = tmp_path / "model"
    assert runner.invoke(app, _fit_args(synthetic_root, model)).exit_code == 0
    before = (model / "config.json").read_text()
    r = runner.invoke(app, _fit_args(synthetic_root, model))
    assert r.exit_code == 2 and "--force" in r.output and (model / "config.json").read_text() == before
    r = runner.invoke(app, _fit_args(synthetic_root, model, "--force", "--holdout", "0"))
    assert r.exit_code == 0, r.output
    assert json.loads((model / "config.json").read_text())["threshold"] is None  # replaced by the new fit


@pytest.mark.parametrize("extra,needle", [
    (["--holdout", "1"], "--holdout must be in [0, 1)"),
    (["--holdout", "-0.1"], "--holdout must be in [0, 1)"),
    (["--fpr", "0"], "--fpr must be in (0, 1)"),
    (["--fpr", "1.5"], "--fpr must be in (0, 1)"),
    (["--set", "coreset_ratio=abc"], "coreset_ratio='abc' must be a number"),
])
def test_fit_rejects_bad_options_before_any_work(tmp_path, extra, needle, monkeypatch):
    import anomalens.data

    def no_data(*a, **k):
        raise AssertionError("data was opened before the options were checked")

    monkeypatch.setattr(anomalens.data, "MVTecAD", no_data)
    r = runner.invoke(app, ["fit", str(tmp_path), "--dataset", "mvtec", "--category", "weave", "-o", str(tmp_path / "m"), *extra])
    assert r.exit_code == 2, r.output
    assert needle in r.output and len(r.output.strip().splitlines()) == 1 and "Traceback" not in r.output


def test_fit_warns_on_a_small_calibration_set_and_records_it(tmp_path, synthetic_root):
    r = runner.invoke(app, _fit_args(synthetic_root, tmp_path / "m", "--holdout", "0.25", "--fpr", "0.01"))
    assert r.exit_code == 0, r.output
    assert "3 calibration images cannot resolve fpr=0.01" in r.output and "0.25" in r.output  # 1/(3+1)
    cal = json.loads((tmp_path / "m" / "config.json").read_text())["calibration"]
    assert cal["n_images"] == 3 and cal["fpr_requested"] == 0.01 and cal["fpr_achievable"] == pytest.approx(0.25)
    assert "3 held-out normals" in r.output
    # the threshold comes from the held-out normals (not the fitted ones): 3 of them, fpr 0.01 -> their highest score
    import anomalens
    from anomalens.cli.common import split_holdout
    from anomalens.data import MVTecAD

    fit_set, held = split_holdout(MVTecAD(synthetic_root, "weave", "train"), 0.25)
    assert len(held) == 3 and not set(held.paths) & set(fit_set.paths)
    saved = anomalens.load(tmp_path / "m")
    scores = saved.predict(held).image_scores
    assert saved.threshold_ == pytest.approx(scores.max(), rel=1e-6)
    assert cal["fpr_empirical"] == 0.0  # none of the 3 lies above the highest of them
    r = runner.invoke(app, _fit_args(synthetic_root, tmp_path / "n", "--holdout", "0.1"))  # 12 images: 1 held out
    assert r.exit_code == 0 and "no threshold calibrated" in r.output
    assert json.loads((tmp_path / "n" / "config.json").read_text())["threshold"] is None


def test_predict_overlays_show_the_whole_original_image_and_the_verdict(tmp_path, synthetic_root):
    import numpy as np
    from PIL import Image

    from anomalens.viz import panel_size

    model_dir = tmp_path / "model"
    assert runner.invoke(app, _fit_args(synthetic_root, model_dir, "--holdout", "0")).exit_code == 0
    src = np.asarray(Image.open(synthetic_root / "weave" / "test" / "hole" / "000.png"))[:, :200]  # 256 x 200: non-square
    Image.fromarray(src).save(tmp_path / "wide.png")
    pngs = {}
    for thr in ("-1e9", "1e9"):
        r = runner.invoke(app, ["predict", str(model_dir), str(tmp_path / "wide.png"), "-o", str(tmp_path / thr), "--threshold", thr])
        assert r.exit_code == 0, r.output
        (png,) = (tmp_path / thr / "overlays").glob("*.png")
        pngs[thr] = np.asarray(Image.open(png).convert("RGB"))
    ph, pw = panel_size(256, 200)
    header = pngs["1e9"].shape[0] - ph
    assert header > 0 and (ph, pw) == (256, 200)
    assert np.array_equal(pngs["1e9"][header:, :pw], src)  # the whole original image, not the model's crop
    assert not np.array_equal(pngs["1e9"][:header], pngs["-1e9"][:header])  # verdict shown
    assert np.array_equal(pngs["1e9"][header:], pngs["-1e9"][header:])


def test_fit_skips_unreadable_training_images_and_records_them(tmp_path):
    """Issue 19 item 8: like predict, fit skips an unreadable image, names it in one line and records it with the
    model; --strict keeps the refusal (naming the file); a folder with no readable image is one line about that."""
    import numpy as np
    from PIL import Image

    good = tmp_path / "good"
    good.mkdir()
    for i in range(4):
        Image.fromarray(np.full((32, 48, 3), 90 + i, np.uint8)).save(good / f"{i}.png")
    (good / "broken.png").write_bytes(b"\x89PNG not really")
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(good / "dot.png")
    r = runner.invoke(app, ["fit", str(good), "-o", str(tmp_path / "m"), "--device", "cpu", *TINY])
    assert r.exit_code == 0, r.output
    line = [ln for ln in r.output.splitlines() if "skipped" in ln]
    assert len(line) == 1 and "broken.png" in line[0] and "dot.png" in line[0] and "Traceback" not in r.output
    saved = json.loads((tmp_path / "m" / "config.json").read_text())["skipped"]
    assert sorted(Path(s["path"]).name for s in saved) == ["broken.png", "dot.png"] and all(s["reason"] for s in saved)
    assert "4 training images" in r.output or "3 training images" in r.output
    for name, needle in (("broken.png", "broken.png"), ("dot.png", "too small")):
        only = tmp_path / f"only_{name}"
        only.mkdir()
        for i in range(4):
            Image.fromarray(np.full((32, 48, 3), 90 + i, np.uint8)).save(only / f"{i}.png")
        (only / name).write_bytes((good / name).read_bytes())
        r = runner.invoke(app, ["fit", str(only), "-o", str(tmp_path / "s"), "--device", "cpu", "--strict", *TINY])
        assert r.exit_code == 2 and needle in r.output and "Traceback" not in r.output
        assert len(r.output.strip().splitlines()) == 1, r.output  # the refusal, no holdout warning before it
    assert not (tmp_path / "s").exists()
    junk = tmp_path / "junk"
    junk.mkdir()
    for i in range(3):
        (junk / f"{i}.png").write_text("not an image")
    r = runner.invoke(app, ["fit", str(junk), "-o", str(tmp_path / "j"), "--device", "cpu", *TINY])
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1 and "none of the 3 files" in r.output, r.output


def test_random_init_is_labelled_in_every_output(tmp_path, synthetic_root):
    """fit's line and config.json, predict's CSV/JSON and summary, evaluate's metrics.json/csv and table, the demo's."""
    model_dir = tmp_path / "model"
    r = runner.invoke(app, _fit_args(synthetic_root, model_dir))
    assert r.exit_code == 0 and "random-init" in r.output
    assert json.loads((model_dir / "config.json").read_text())["random_init"] is True
    imgs = str(synthetic_root / "weave" / "test" / "hole")
    r = runner.invoke(app, ["predict", str(model_dir), imgs, "-o", str(tmp_path / "p"), "--no-overlays"])
    assert r.exit_code == 0 and "random-init" in r.output
    assert all(row["random_init"] == "True" for row in csv.DictReader(open(tmp_path / "p" / "predictions.csv")))
    r = runner.invoke(app, ["predict", str(model_dir), imgs, "-o", str(tmp_path / "j"), "--no-overlays", "--format", "json"])
    assert json.loads((tmp_path / "j" / "predictions.json").read_text())["info"]["random_init"] is True
    r = runner.invoke(app, ["evaluate", str(synthetic_root), "--category", "disc", "-o", str(tmp_path / "e"), "--shots", "4",
                            "--device", "cpu", *TINY])
    assert r.exit_code == 0 and "random-init" in r.output
    assert json.loads((tmp_path / "e" / "metrics.json").read_text())["random_init"] is True
    rows = list(csv.DictReader(open(tmp_path / "e" / "metrics.csv")))
    assert rows and all(row["random_init"] == "True" for row in rows)
    r = runner.invoke(app, ["demo", "--out", str(tmp_path / "d"), "--category", "disc", "--n-train", "6", "--device", "cpu",
                            "--random-init"])
    assert r.exit_code == 0 and "random-init" in r.output
    m = json.loads((tmp_path / "d" / "metrics.json").read_text())
    assert m["random_init"] is True and m["per_category"]["disc"]["info"]["random_init"] is True
