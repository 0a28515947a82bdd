"""`predict --ray`: Ray Data batch inference on a local cluster equals the single-process streaming predict."""
from __future__ import annotations

import csv
import os
import shutil

import pytest
from typer.testing import CliRunner

pytest.importorskip("ray")
pytest.importorskip("pyarrow")

import anomalens.errors  # noqa: E402
from anomalens.cli import app  # noqa: E402
from anomalens.deploy.stream import predict_stream  # noqa: E402

from conftest import tiny_patchcore  # noqa: E402

THRESHOLD = 0.5


@pytest.fixture(scope="module")
def cluster():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def model_dir(synthetic_root, tmp_path_factory):
    det = tiny_patchcore().fit(str(synthetic_root / "weave" / "train" / "good"))
    det.threshold_ = THRESHOLD
    return det.save(tmp_path_factory.mktemp("ray") / "model")


@pytest.fixture(scope="module")
def folder(synthetic_root, tmp_path_factory):
    """9 readable test images of the weave category in two sub-folders, a truncated PNG, a text file named .jpg."""
    root = tmp_path_factory.mktemp("incoming")
    shutil.copytree(synthetic_root / "weave" / "test" / "good", root / "a")
    shutil.copytree(synthetic_root / "weave" / "test" / "hole", root / "b")
    good = next((root / "a").glob("*.png"))
    (root / "a" / "zz_truncated.png").write_bytes(good.read_bytes()[:200])
    (root / "b" / "notes.jpg").write_text("not an image")
    return root


@pytest.fixture(scope="module")
def single(model_dir, folder, tmp_path_factory):
    """The single-process streaming predict of the same folder: {path: row}."""
    import anomalens

    det = anomalens.load(model_dir, device="cpu")
    summary = predict_stream(det, folder, tmp_path_factory.mktemp("single"), batch_size=3)
    return {r["path"]: r for r in csv.DictReader(open(summary.path, newline=""))}


def _assert_same_rows(rows: dict, ref: dict) -> None:
    assert set(rows) == set(ref)
    for p, r in rows.items():
        assert bool(r["error"]) == bool(ref[p]["error"]), p
        if ref[p]["error"]:
            assert r["score"] in ("", None) and "unreadable" in str(r["error"])
            continue
        assert float(r["score"]) == pytest.approx(float(ref[p]["score"]), rel=1e-5, abs=1e-5)
        assert str(r["anomalous"]) == ref[p]["anomalous"]


def test_ray_equals_single_process_csv_and_parquet(cluster, model_dir, folder, single, tmp_path):
    import pyarrow.parquet as pq

    from anomalens.deploy.ray_predict import predict_ray

    summary = predict_ray(model_dir, folder, tmp_path / "out", num_actors=2, device="cpu", batch_size=3, read_batch_size=2)
    assert (summary.n_scored, summary.n_failed, summary.n_resumed) == (len(single) - 2, 2, 0)
    assert summary.n_anomalous == sum(r["anomalous"] == "True" for r in single.values())
    rows = {r["path"]: r for r in csv.DictReader(open(summary.table, newline=""))}
    _assert_same_rows(rows, single)
    table = pq.read_table(summary.path).to_pylist()
    assert len(table) == len(single)
    _assert_same_rows({r["path"]: r for r in table}, single)
    assert not list((tmp_path / "out").glob("*.tmp*"))  # the Parquet file was written under a temporary name


def test_ray_resume_scores_only_new_images(cluster, model_dir, folder, single, tmp_path):
    from anomalens.deploy.ray_predict import predict_ray

    first = sorted((folder / "a").glob("*.png"))
    out = tmp_path / "out"
    predict_ray(model_dir, [str(p) for p in first], out, num_actors=1, device="cpu")
    again = predict_ray(model_dir, folder, out, num_actors=2, device="cpu")
    assert again.n_resumed == len(first) and again.n_scored + again.n_failed == len(single) - len(first)
    rows = list(csv.DictReader(open(again.table, newline="")))
    assert len(rows) == len({r["path"] for r in rows}) == len(single)  # nothing scored twice
    _assert_same_rows({r["path"]: r for r in rows}, single)


def test_ray_never_replaces_a_parquet_file_it_did_not_write(cluster, model_dir, folder, tmp_path):
    from anomalens.deploy.ray_predict import predict_ray
    from anomalens.errors import DataError

    out = tmp_path / "out"
    out.mkdir()
    (out / "predictions.parquet").write_text("a user's file")
    with pytest.raises(DataError, match="--no-resume"):
        predict_ray(model_dir, folder, out, device="cpu")
    assert (out / "predictions.parquet").read_text() == "a user's file" and sorted(os.listdir(out)) == ["predictions.parquet"]
    predict_ray(model_dir, folder, out, device="cpu", resume=False)  # asked for: replaced
    assert (out / "predictions.parquet").read_bytes()[:4] == b"PAR1"


def test_ray_refuses_an_uncalibrated_ensemble_for_real(cluster, synthetic_root, folder, tmp_path):
    """An uncalibrated PatchCore ensemble min–max-normalises each member over the scored set (`needs_whole_set`):
    Ray's per-actor batches would each get their own normalisation, so --ray refuses it (API and CLI), before any
    output is written; calibrated, the same ensemble scores each image alone and runs on Ray."""
    from anomalens.deploy.ray_predict import predict_ray
    from anomalens.errors import DataError

    train = str(synthetic_root / "weave" / "train" / "good")
    ens = tiny_patchcore(backbone=["resnet18", "resnet18"], layers=[["layer2"], ["layer3"]]).fit(train)
    assert ens.member_stats_ is None
    ens_dir = ens.save(tmp_path / "ens")
    with pytest.raises(DataError, match="without --ray"):
        predict_ray(ens_dir, folder, tmp_path / "out", device="cpu")
    r = CliRunner().invoke(app, ["predict", str(ens_dir), str(folder), "-o", str(tmp_path / "o"), "--ray", "auto",
                                 "--device", "cpu"])
    assert r.exit_code == 2 and "without --ray" in r.output, r.output
    assert not (tmp_path / "out").exists() and not (tmp_path / "o").exists()
    ens.calibrate(str(synthetic_root / "weave" / "test" / "good"), fpr=0.2)
    s = predict_ray(ens.save(tmp_path / "cal"), folder / "a", tmp_path / "out", device="cpu", num_actors=1)
    assert (s.n_scored, s.n_failed) == (len(list((folder / "a").glob("[!z]*.png"))), 1)


def test_ray_refuses_to_resume_rows_of_another_fit(cluster, synthetic_root, model_dir, folder, tmp_path):
    """Issue 25: same settings, fitted on other images (model B): B must not resume the rows A wrote."""
    from anomalens.deploy.ray_predict import predict_ray
    from anomalens.errors import DataError

    train = sorted(str(p) for p in (synthetic_root / "weave" / "train" / "good").glob("*.png"))
    other = tiny_patchcore().fit(train[:6])
    other.threshold_ = THRESHOLD
    other_dir = other.save(tmp_path / "B")
    out = tmp_path / "out"
    predict_ray(model_dir, folder / "a", out, device="cpu", num_actors=1)
    with pytest.raises(DataError, match="--no-resume"):
        predict_ray(other_dir, folder / "a", out, device="cpu", num_actors=1)
    again = predict_ray(model_dir, folder / "a", out, device="cpu", num_actors=1)  # A itself still resumes
    assert again.n_scored == 0 and again.n_resumed == len(list((folder / "a").iterdir()))


def test_parquet_survives_a_failed_swap(tmp_path, monkeypatch):
    """Issue 25: predictions.parquet is written under a temporary name and renamed; a failed rename keeps the old
    file and leaves no temporary file."""
    import json

    import pyarrow.parquet as pq

    from anomalens.deploy.ray_predict import log_to_parquet

    from conftest import fail_swap, tmp_debris

    log = tmp_path / "predictions.jsonl"
    row = {"path": "a.png", "score": 0.5, "anomalous": False, "random_init": True, "error": None}
    log.write_text(json.dumps(row) + "\n")
    log_to_parquet(log, tmp_path / "p.parquet")
    before = (tmp_path / "p.parquet").read_bytes()
    log.write_text(json.dumps(row) + "\n" + json.dumps(dict(row, path="b.png")) + "\n")
    fail_swap(monkeypatch, tmp_path / "p.parquet")
    with pytest.raises(OSError, match="injected"):
        log_to_parquet(log, tmp_path / "p.parquet")
    assert (tmp_path / "p.parquet").read_bytes() == before and tmp_debris(tmp_path) == []
    monkeypatch.undo()
    assert pq.read_table(log_to_parquet(log, tmp_path / "p.parquet")).num_rows == 2


def test_cli_predict_ray(cluster, model_dir, folder, single, tmp_path):
    r = CliRunner().invoke(app, ["predict", str(model_dir), str(folder), "-o", str(tmp_path / "o"), "--ray", "auto",
                                 "--workers", "2", "--device", "cpu", "--format", "json"])
    assert r.exit_code == 0, r.output
    assert "2 unreadable" in r.output and (tmp_path / "o" / "predictions.parquet").is_file()
    assert len(list((tmp_path / "o" / "overlays").rglob("*.png"))) == len(single) - 2  # drawn by the actors
    import json

    doc = json.loads((tmp_path / "o" / "predictions.json").read_text())
    rows = doc["predictions"]
    _assert_same_rows({row["path"]: {k: ("" if v is None else v) for k, v in row.items()} for row in rows}, single)
    # one overlay per scored row, named in the row, with the names (and bytes) of the single-process runner
    drawn = sorted((tmp_path / "o" / "overlays").glob("*.png"))
    assert sorted(str(tmp_path / "o" / "overlays" / os.path.basename(r["overlay"])) for r in rows if r["overlay"]) == \
        [str(p) for p in drawn]
    r1 = CliRunner().invoke(app, ["predict", str(model_dir), str(folder), "-o", str(tmp_path / "s"), "--device", "cpu"])
    assert r1.exit_code == 0, r1.output
    import numpy as np
    from PIL import Image

    for p in drawn:  # same colours: the maps of the two runners differ by float noise only (<= 1 level of 255)
        a = np.asarray(Image.open(p), dtype=int)
        b = np.asarray(Image.open(tmp_path / "s" / "overlays" / p.name), dtype=int)
        assert a.shape == b.shape and np.abs(a - b).max() <= 1, p.name


def test_actor_cpus_leave_room_for_reading():
    """Actors hold their CPUs for the whole run: with none left for a read task the pipeline would never start."""
    from anomalens.deploy.ray_predict import actor_cpus
    from anomalens.errors import DataError

    for cpus, actors, read in [(2, 2, 0.25), (2, 1, 0.25), (16, 4, 0.25), (1, 3, 0.5), (64, 8, 1.0)]:
        each = actor_cpus(cpus, actors, read)
        assert 0 < each <= 1.0 and actors * each + read <= cpus
    assert actor_cpus(16, 4, 0.25) == 1.0
    with pytest.raises(DataError, match="fewer --workers"):
        actor_cpus(1, 40, 0.5)


def test_unreachable_cluster_address_fails_fast(model_dir, folder, tmp_path):
    """Ray retries a dead address for minutes; we check the port first and say so in one line."""
    import socket
    import time

    from anomalens.deploy.ray_predict import reachable

    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    t0 = time.perf_counter()
    r = CliRunner().invoke(app, ["predict", str(model_dir), str(folder), "-o", str(tmp_path / "o"),
                                 "--ray", f"127.0.0.1:{port}", "--device", "cpu"])
    assert r.exit_code == 2 and "cannot reach the Ray cluster" in r.output and time.perf_counter() - t0 < 60
    assert not (tmp_path / "o").exists()
    with pytest.raises(anomalens.errors.DataError, match="HOST:PORT"):
        reachable("no-port-here")
    with socket.socket() as server:  # a listening port passes
        server.bind(("127.0.0.1", 0))
        server.listen()
        reachable(f"ray://127.0.0.1:{server.getsockname()[1]}")
