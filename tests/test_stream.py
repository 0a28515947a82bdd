"""Streaming predict: equal to Detector.predict, bounded batches, unreadable files reported, resumable, CLI."""
from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from anomalens.cli import app
from anomalens.deploy.stream import needs_whole_set, predict_stream
from anomalens.errors import DataError

from conftest import tiny_patchcore

runner = CliRunner()


@pytest.fixture(scope="module")
def fitted(synthetic_root):
    return tiny_patchcore().fit(str(synthetic_root / "weave" / "train" / "good"))


@pytest.fixture()
def folder(tmp_path, synthetic_root):
    """A predict folder: 8 test images in two sub-folders, plus a corrupt PNG and a text file named .jpg."""
    root = tmp_path / "incoming"
    shutil.copytree(synthetic_root / "weave" / "test" / "good", root / "a")
    shutil.copytree(synthetic_root / "weave" / "test" / "hole", root / "b")
    shutil.copytree(synthetic_root / "weave" / "test" / "stain", root / "b" / "c")
    good = next((root / "a").glob("*.png"))
    (root / "a" / "zz_truncated.png").write_bytes(good.read_bytes()[:200])
    (root / "b" / "notes.jpg").write_text("not an image")
    return root


def rows_of(path):
    return list(csv.DictReader(open(path, newline="")))


def reference_scores(model, paths):
    pred = model.predict(sorted(paths))
    return dict(zip(pred.paths, pred.image_scores))


def test_stream_equals_predict_and_reports_unreadable(fitted, folder, tmp_path):
    fitted.threshold_ = 0.5
    seen = []
    summary = predict_stream(fitted, folder, tmp_path / "out", batch_size=3, on_batch=lambda p: seen.append(len(p)))
    rows = rows_of(summary.path)
    readable = [r for r in rows if not r["error"]]
    failed = {r["path"].rsplit("/", 1)[1]: r for r in rows if r["error"]}
    assert set(failed) == {"zz_truncated.png", "notes.jpg"}
    assert all(r["score"] == "" and "unreadable" in r["error"] for r in failed.values())
    assert len(readable) == 8 and len({r["path"] for r in rows}) == len(rows) == 10
    ref = reference_scores(fitted, [r["path"] for r in readable])
    for r in readable:
        assert float(r["score"]) == pytest.approx(ref[r["path"]], rel=1e-6, abs=1e-6)
        assert r["anomalous"] == str(float(r["score"]) > 0.5)
    assert max(seen) <= 3 and sum(seen) == 8  # maps only ever held one batch at a time
    assert (summary.n_scored, summary.n_failed, summary.n_resumed) == (8, 2, 0)


def test_resume_after_interruption_skips_done_and_cuts_partial_line(fitted, folder, tmp_path):
    out = tmp_path / "out"
    fitted.threshold_ = None

    def crash(pred):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        predict_stream(fitted, folder, out, batch_size=4, on_batch=crash)
    assert rows_of(out / "predictions.csv") == []  # the crashed batch was never half-written
    predict_stream(fitted, folder, out, batch_size=4, on_batch=lambda p: None)
    full = rows_of(out / "predictions.csv")
    # simulate a crash after 5 rows, mid-way through the sixth line
    lines = (out / "predictions.csv").read_text().splitlines(keepends=True)
    (out / "predictions.csv").write_text("".join(lines[:6]) + lines[6][:7])
    summary = predict_stream(fitted, folder, out, batch_size=4)
    rows = rows_of(out / "predictions.csv")
    assert summary.n_resumed == 5 and summary.n_scored + summary.n_failed == 5
    assert sorted(r["path"] for r in rows) == sorted(r["path"] for r in full)
    by_path = {r["path"]: r for r in full}
    for r in rows:
        assert r["error"] == by_path[r["path"]]["error"]
        if r["score"]:
            assert float(r["score"]) == pytest.approx(float(by_path[r["path"]]["score"]), rel=1e-6)


def test_resume_refuses_results_of_another_threshold(fitted, folder, tmp_path):
    fitted.threshold_ = None
    predict_stream(fitted, folder / "a", tmp_path / "out")
    fitted.threshold_ = 1.0
    with pytest.raises(DataError, match="no-resume"):
        predict_stream(fitted, folder / "a", tmp_path / "out")
    s = predict_stream(fitted, folder / "a", tmp_path / "out", resume=False)
    assert s.n_resumed == 0 and len(rows_of(s.path)) == 5
    fitted.threshold_ = None


def test_mixed_sizes_scored_per_size_group(tmp_path, synthetic_root):
    """Whole-image geometry (shorter side, no crop): images of different shapes in one batch each score as alone."""
    from PIL import Image

    src = sorted((synthetic_root / "weave" / "test" / "good").glob("*.png"))
    for i, p in enumerate(src[:4]):
        img = Image.open(p)
        img.crop((0, 0, img.width, img.height - 40 * (i % 2))).save(tmp_path / f"{i}.png")
    model = tiny_patchcore(resize=64, crop=None).fit(str(synthetic_root / "weave" / "train" / "good"))
    s = predict_stream(model, tmp_path, tmp_path / "out", batch_size=4)
    rows = rows_of(s.path)
    assert len(rows) == 4 and not any(r["error"] for r in rows)
    for r in rows:
        alone = model.predict([r["path"]]).image_scores[0]
        assert float(r["score"]) == pytest.approx(alone, rel=1e-5)


def test_models_with_score_components_stream_like_predict(folder, tmp_path):
    """CLIP-AD's batches carry named score components beside scores and maps: the streaming route (also serve's
    and Ray's) takes the scores and maps and equals `predict`."""
    from test_clipad import TINY

    import anomalens

    model = anomalens.create("clipad", class_name="fabric", **TINY).fit()
    summary = predict_stream(model, folder / "b", tmp_path / "out", batch_size=2)
    rows = [r for r in rows_of(summary.path) if not r["error"]]
    assert len(rows) == 4 and summary.n_failed == 1
    ref = reference_scores(model, [r["path"] for r in rows])
    for r in rows:
        assert float(r["score"]) == pytest.approx(ref[r["path"]], rel=1e-6, abs=1e-6)


def test_cli_json_never_replaces_a_users_file(fitted, folder, tmp_path):
    model_dir = fitted.save(tmp_path / "model")
    out = tmp_path / "out"
    out.mkdir()
    (out / "predictions.json").write_text('{"mine": 1}')
    args = ["predict", str(model_dir), str(folder / "a"), "-o", str(out), "--format", "json", "--no-overlays"]
    r = runner.invoke(app, args)
    assert r.exit_code == 2 and "--force" in r.output and str(out / "predictions.json") in r.output
    assert (out / "predictions.json").read_text() == '{"mine": 1}' and sorted(p.name for p in out.iterdir()) == ["predictions.json"]
    assert runner.invoke(app, args).exit_code == 2  # still refused on a second try
    assert runner.invoke(app, args + ["--no-resume"]).exit_code == 2  # restarting its own run is not replacing a user's file
    assert runner.invoke(app, args + ["--force"]).exit_code == 0
    assert "predictions" in json.loads((out / "predictions.json").read_text())
    assert runner.invoke(app, args).exit_code == 0  # its own output resumes


def test_whole_set_models_detected(fitted):
    from anomalens.detector import Detector

    class SetLevel(Detector):
        def predict(self, data):  # noqa: D401 - a model scoring images against each other
            raise AssertionError

    assert not needs_whole_set(fitted)
    assert needs_whole_set(SetLevel())


def test_cli_reports_unreadable_and_calibration(fitted, folder, tmp_path):
    fitted.threshold_ = None
    fitted.calibrate(str(folder / "a" / "*.png").replace("*.png", "[!z]*.png"), fpr=0.2)
    fitted.calibration_["fpr_empirical"] = 0.25
    model_dir = fitted.save(tmp_path / "model")
    r = runner.invoke(app, ["predict", str(model_dir), str(folder), "-o", str(tmp_path / "p"), "--set", "batch_size=5"])
    assert r.exit_code == 0, r.output
    assert "2 unreadable" in r.output and "notes.jpg" in r.output
    assert "4 normal images" in r.output and "empirical FPR 0.25" in r.output and "target FPR 0.2" in r.output
    assert len(list((tmp_path / "p" / "overlays").glob("*.png"))) == 8
    assert len(rows_of(tmp_path / "p" / "predictions.csv")) == 10
    r = runner.invoke(app, ["predict", str(model_dir), str(folder), "-o", str(tmp_path / "p"), "--no-overlays"])
    assert r.exit_code == 0 and "10 already done" in r.output and "scored 0 images" in r.output
    r = runner.invoke(app, ["predict", str(model_dir), str(folder), "-o", str(tmp_path / "j"), "--format", "json",
                            "--no-overlays", "--threshold", "0"])
    assert r.exit_code == 0, r.output
    doc = json.loads((tmp_path / "j" / "predictions.json").read_text())
    assert len(doc["predictions"]) == 10 and doc["calibration"]["n_images"] == 4 and doc["threshold"] == 0
    assert sum(p["error"] is not None for p in doc["predictions"]) == 2
    assert "given on the command line" in r.output
    r = runner.invoke(app, ["predict", str(model_dir), str(folder), "-o", str(tmp_path / "p"), "--threshold", "3"])
    assert r.exit_code == 2 and "--no-resume" in r.output


# ---- issue 25: the run signature covers what the model learned ---------------------------------------------------
def test_resume_refuses_results_of_another_fit_with_the_same_settings(synthetic_root, folder, tmp_path):
    """Model A and model B: same settings, fitted on other images. B must not resume A's rows (the bug: 'resumed
    N, scored 0', A's scores kept); the refusal names --no-resume, which then rescores with B."""
    import anomalens

    train = sorted(str(p) for p in (synthetic_root / "weave" / "train" / "good").glob("*.png"))
    a = tiny_patchcore().fit(train[:6])
    b = tiny_patchcore().fit(train[6:])
    assert a.get_params() == b.get_params() and a.threshold_ is None and b.threshold_ is None
    out = tmp_path / "out"
    predict_stream(a, folder / "a", out)
    with pytest.raises(DataError, match="--no-resume"):
        predict_stream(b, folder / "a", out)
    a_dir, b_dir = a.save(tmp_path / "A"), b.save(tmp_path / "B")
    assert predict_stream(anomalens.load(a_dir), folder / "a", out).n_resumed == 5  # A saved + loaded is still A
    r = runner.invoke(app, ["predict", str(b_dir), str(folder / "a"), "-o", str(out), "--no-overlays"])
    assert r.exit_code == 2 and "--no-resume" in r.output
    r = runner.invoke(app, ["predict", str(b_dir), str(folder / "a"), "-o", str(out), "--no-overlays", "--no-resume"])
    assert r.exit_code == 0, r.output
    ref = reference_scores(b, [r["path"] for r in rows_of(out / "predictions.csv") if not r["error"]])
    for row in rows_of(out / "predictions.csv"):
        if not row["error"]:
            assert float(row["score"]) == pytest.approx(ref[row["path"]], rel=1e-6, abs=1e-6)


def test_state_digest_same_after_save_load_and_hashed_in_chunks(synthetic_root, tmp_path, monkeypatch):
    import hashlib

    import anomalens
    import anomalens.deploy.stream as stream

    model = tiny_patchcore(bank_dtype="float16").fit(str(synthetic_root / "disc" / "train" / "good"))
    digest = stream.state_digest(model)
    loaded = anomalens.load(model.save(tmp_path / "m"))
    assert stream.state_digest(loaded) == digest
    loaded.memory_banks_[0] = loaded.memory_banks_[0].clone()
    loaded.memory_banks_[0][-1, -1] += 1  # one learned value differs: another model
    assert stream.state_digest(loaded) != digest

    bank = model.memory_banks_[0]
    row_bytes = bank[0].numel() * bank.element_size()
    monkeypatch.setattr(stream, "DIGEST_CHUNK_BYTES", 3 * row_bytes)
    sizes = []
    real_sha256 = hashlib.sha256

    class Spy:  # records how many bytes each update hands to SHA-256
        def __init__(self):
            self.h = real_sha256()

        def update(self, data):
            sizes.append(memoryview(data).nbytes)
            self.h.update(data)

        def hexdigest(self):
            return self.h.hexdigest()

    monkeypatch.setattr(hashlib, "sha256", Spy)
    assert stream.state_digest(model) == digest  # the chunk size changes how, not what, is hashed
    assert bank.numel() * bank.element_size() > 3 * row_bytes and max(sizes) <= 3 * row_bytes


def test_predict_outputs_survive_a_failed_swap(fitted, folder, tmp_path, monkeypatch):
    """Issue 25: run.json and predictions.json are written under a temporary name and renamed; when the rename
    fails, the previous file is untouched and no temporary file remains."""
    from anomalens.deploy.stream import finish_json

    from conftest import fail_swap, tmp_debris

    out = tmp_path / "out"
    fitted.threshold_ = None
    predict_stream(fitted, folder / "a", out, fmt="jsonl")
    run_before, log_before = (out / "run.json").read_text(), (out / "predictions.jsonl").read_text()
    fitted.threshold_ = 1.0
    fail_swap(monkeypatch, out / "run.json")
    with pytest.raises(OSError, match="injected"):
        predict_stream(fitted, folder / "a", out, fmt="jsonl", resume=False)
    assert (out / "run.json").read_text() == run_before and (out / "predictions.jsonl").read_text() == log_before
    assert tmp_debris(tmp_path) == []
    monkeypatch.undo()

    finish_json(out / "predictions.jsonl", out / "predictions.json", {"threshold": None})
    doc_before = (out / "predictions.json").read_text()
    with open(out / "predictions.jsonl", "a") as fh:  # one more row: the next file would differ
        fh.write(json.dumps({"path": "x.png", "score": 1.0, "anomalous": None, "random_init": True, "error": None}) + "\n")
    fail_swap(monkeypatch, out / "predictions.json")
    with pytest.raises(OSError, match="injected"):
        finish_json(out / "predictions.jsonl", out / "predictions.json", {"threshold": 2.0})
    assert (out / "predictions.json").read_text() == doc_before and tmp_debris(tmp_path) == []
    monkeypatch.undo()
    doc = json.loads(finish_json(out / "predictions.jsonl", out / "predictions.json", {"threshold": 2.0}).read_text())
    assert doc["threshold"] == 2.0 and len(doc["predictions"]) == len(json.loads(doc_before)["predictions"]) + 1
    fitted.threshold_ = None
