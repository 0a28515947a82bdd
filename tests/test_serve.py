"""`anomalens serve`: responses equal `predict` of each image alone, batching, 4xx on bad input, metrics, SIGTERM."""
from __future__ import annotations

import asyncio
import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from PIL import Image  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

import anomalens  # noqa: E402
from anomalens.cli import app as cli_app  # noqa: E402
from anomalens.deploy.serve import create_app, decode_map_png  # noqa: E402

from conftest import tiny_patchcore  # noqa: E402

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(scope="module")
def images(synthetic_root, tmp_path_factory) -> list[Path]:
    """Test images of the synthetic weave, plus two of other shapes (a crop of each), as PNG files."""
    out = tmp_path_factory.mktemp("serve_images")
    src = sorted((synthetic_root / "weave" / "test").rglob("*.png"))[:6]
    paths = []
    for i, p in enumerate(src):
        img = Image.open(p)
        if i >= 4:  # non-square: original size differs from the model's input
            img = img.crop((0, 0, img.width - 60 * (i - 3), img.height - 20))
        paths.append(out / f"img{i}.png")
        img.save(paths[-1])
    return paths


@pytest.fixture(scope="module")
def model_dir(synthetic_root, images, tmp_path_factory) -> Path:
    """A small saved random-init PatchCore whose threshold splits the test images (so both verdicts occur)."""
    det = tiny_patchcore().fit(str(synthetic_root / "weave" / "train" / "good"))
    det.threshold_ = float(np.median(det.predict([str(p) for p in images]).image_scores))
    return det.save(tmp_path_factory.mktemp("serve_model") / "model")


@pytest.fixture(scope="module")
def model(model_dir):
    return anomalens.load(model_dir, device="cpu")


def alone(model, path) -> float:
    return float(model.predict([str(path)]).image_scores[0])


def png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


# ----------------------------------------------------------------------------------------------- in-process
def test_predict_multipart_and_raw_body_equal_predict_alone(model, images):
    from fastapi.testclient import TestClient

    with TestClient(create_app(model)) as client:
        verdicts = set()
        for p in images:
            ref = alone(model, p)
            r = client.post("/predict", files={"file": (p.name, p.read_bytes(), "image/png")})
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["path"] == p.name and body["threshold"] == model.threshold_
            assert body["score"] == pytest.approx(ref, abs=1e-5, rel=1e-5)
            assert body["anomalous"] == (ref > model.threshold_)
            verdicts.add(body["anomalous"])
            raw = client.post("/predict", content=p.read_bytes(), headers={"content-type": "application/octet-stream"})
            assert raw.status_code == 200 and raw.json()["path"] is None
            assert raw.json()["score"] == pytest.approx(ref, abs=1e-5, rel=1e-5)
        assert verdicts == {True, False}
        health = client.get("/health").json()
        assert health["model"] == model.name and health["threshold"] == model.threshold_
        assert health["random_init"] is True and health["device"] == "cpu"


def test_no_threshold_means_anomalous_null(model_dir, images):
    from fastapi.testclient import TestClient

    det = anomalens.load(model_dir, device="cpu")
    det.threshold_ = None
    with TestClient(create_app(det)) as client:
        body = client.post("/predict", content=images[0].read_bytes()).json()
    assert body["anomalous"] is None and body["threshold"] is None and np.isfinite(body["score"])
    assert client.app.state.model is det


def test_map_png_is_the_map_at_original_size(model, images):
    """The PNG decodes to `Prediction.map_at_original_size` within its 16-bit quantisation, NaN where the crop hid
    pixels; checked on a square and a non-square image."""
    from fastapi.testclient import TestClient

    with TestClient(create_app(model)) as client:
        for p in (images[0], images[5]):
            r = client.post("/predict?map=png", files={"file": (p.name, p.read_bytes(), "image/png")})
            assert r.status_code == 200, r.text
            got = decode_map_png(r.json())
            ref = model.predict([str(p)]).map_at_original_size(0)
            w, h = Image.open(p).size
            assert got.shape == ref.shape == (h, w)
            assert np.array_equal(np.isnan(got), np.isnan(ref)) and np.isnan(ref).any()  # the 72 -> 64 crop
            seen = ~np.isnan(ref)
            step = (r.json()["map_max"] - r.json()["map_min"]) / 65534
            assert np.nanmax(np.abs(got[seen] - ref[seen])) <= step / 2 + 1e-5 * max(1.0, float(np.abs(ref[seen]).max()))
        assert client.post("/predict?map=jpg", content=images[0].read_bytes()).status_code == 400


def test_bad_requests_answer_4xx_and_the_service_stays_up(model, images):
    from fastapi.testclient import TestClient

    good = images[0].read_bytes()
    ref = alone(model, images[0])
    gif = io.BytesIO()
    Image.new("RGB", (32, 32)).save(gif, format="GIF")
    bad = {
        "empty body": (dict(content=b""), 400),
        "truncated png": (dict(content=good[:300]), 400),
        "text body": (dict(content=b"hello", headers={"content-type": "text/plain"}), 415),
        "json body": (dict(json={"image": "x"}), 415),
        "random bytes": (dict(content=os.urandom(2000), headers={"content-type": "application/octet-stream"}), 415),
        "gif (unsupported format)": (dict(content=gif.getvalue()), 415),
        "4x4 image": (dict(files={"file": ("dot.png", png_bytes(np.zeros((4, 4, 3), np.uint8)), "image/png")}), 422),
        "multipart without file": (dict(data={"other": "x"}, files={"x": ("a.png", good, "image/png")}), 400),
        "over the upload limit": (dict(content=good + b"\0" * 60_000), 413),
    }
    expected: dict[str, int] = {}
    with TestClient(create_app(model, max_upload_mb=len(good) * 1.5 / 2**20)) as client:
        for what, (kw, status) in bad.items():
            r = client.post("/predict", **kw)
            assert r.status_code == status, (what, r.text)
            assert isinstance(r.json()["error"], str) and r.json()["error"], what
            ok = client.post("/predict", content=good)
            assert ok.status_code == 200 and ok.json()["score"] == pytest.approx(ref, abs=1e-5, rel=1e-5), what
            for s in (status, 200):
                expected[str(s)] = expected.get(str(s), 0) + 1
        m = client.get("/metrics").json()
    assert m["requests"]["by_status"] == expected
    assert m["requests"]["total"] == m["latency_ms"]["count"] == 2 * len(bad)
    assert m["batches"]["images"] == len(bad)  # only the good requests reached the model
    assert 0 < m["latency_ms"]["p50"] <= m["latency_ms"]["p95"]


def test_concurrent_requests_are_batched_and_each_equals_alone(synthetic_root, tmp_path):
    """Whole-image geometry (no crop): images of different shapes sent together form one batch of several size groups;
    each answer equals predict of that image alone."""
    det = tiny_patchcore(resize=64, crop=None).fit(str(synthetic_root / "weave" / "train" / "good"))
    src = sorted((synthetic_root / "weave" / "test" / "good").glob("*.png"))
    paths = []
    for i in range(6):
        img = Image.open(src[i % len(src)])
        img.crop((0, 0, img.width, img.height - 40 * (i % 3))).save(tmp_path / f"{i}.png")
        paths.append(tmp_path / f"{i}.png")
    app = create_app(det, max_batch=16, max_wait_ms=1000)

    async def run():
        transport = httpx.ASGITransport(app=app)
        async with app.router.lifespan_context(app):
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                rs = await asyncio.gather(*[client.post("/predict", content=p.read_bytes()) for p in paths])
                return rs, (await client.get("/metrics")).json()

    responses, metrics = asyncio.run(run())
    for p, r in zip(paths, responses):
        assert r.status_code == 200, r.text
        assert r.json()["score"] == pytest.approx(alone(det, p), abs=1e-5, rel=1e-5)
    assert metrics["batches"]["max_size"] > 1 and metrics["batches"]["count"] < len(paths)
    assert metrics["batches"]["images"] == len(paths)


def test_whole_set_models_score_each_request_alone(model_dir, images):
    """A model whose scores depend on the set scored together is never batched: each answer equals its predict of
    that image alone, even when the requests arrive together."""
    det = anomalens.load(model_dir, device="cpu")

    class SetScored(type(det)):
        def predict(self, data):  # every score shifted by the set's mean: depends on the other images
            pred = super().predict(data)
            pred.image_scores = pred.image_scores + pred.image_scores.mean()
            return pred

    det.__class__ = SetScored
    app = create_app(det, max_batch=8, max_wait_ms=500)

    async def run():
        async with app.router.lifespan_context(app):
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
                return await asyncio.gather(*[client.post("/predict", content=p.read_bytes()) for p in images[:4]])

    for p, r in zip(images, asyncio.run(run())):
        assert r.status_code == 200, r.text
        assert r.json()["score"] == pytest.approx(alone(det, p), abs=1e-5, rel=1e-5)
    assert app.state.metrics.snapshot()["batches"]["max_size"] > 1  # collected together, scored one by one


def test_missing_extra_is_one_line_naming_the_install(monkeypatch, model_dir):
    monkeypatch.setitem(sys.modules, "fastapi", None)  # `import fastapi` now raises ImportError
    r = CliRunner().invoke(cli_app, ["serve", str(model_dir)])
    assert r.exit_code == 2
    assert "pip install 'anomalens[serve]'" in r.output and "fastapi" in r.output and "Traceback" not in r.output


def test_cli_settings_are_validated_then_reach_the_served_model(monkeypatch, model_dir):
    import anomalens.deploy.serve as serving

    r = CliRunner().invoke(cli_app, ["serve", str(model_dir), "--set", "batch_size=abc"])
    assert r.exit_code == 2 and "batch_size" in r.output and "Traceback" not in r.output
    served = {}
    monkeypatch.setattr(serving, "serve", lambda det, **kw: served.update(det=det, **kw))
    r = CliRunner().invoke(cli_app, ["serve", str(model_dir), "--set", "batch_size=3", "--device", "cpu", "--port", "0"])
    assert r.exit_code == 0, r.output
    assert served["det"].batch_size == 3 and served["port"] == 0


# ----------------------------------------------------------------------------------------------- loopback
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_loopback_concurrent_clients_and_sigterm_drains(model, model_dir, images, tmp_path):
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", ""), ANOMALENS_PROGRESS="0")
    log = open(tmp_path / "server.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "anomalens.cli.main", "serve", str(model_dir), "--port", str(port),
                             "--device", "cpu", "--max-batch", "8", "--max-wait-ms", "1500", "--log-level", "warning"],
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            assert proc.poll() is None, open(tmp_path / "server.log").read()
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.time() < deadline, "server did not come up"
            time.sleep(0.2)

        def send(paths, out):
            def one(i, p):
                with open(p, "rb") as fh:
                    out[i] = httpx.post(f"{base}/predict", files={"file": (p.name, fh, "image/png")}, timeout=120)
            threads = [threading.Thread(target=one, args=(i, p)) for i, p in enumerate(paths)]
            for t in threads:
                t.start()
            return threads

        results: dict[int, httpx.Response] = {}
        for t in send(images, results):
            t.join()
        for i, p in enumerate(images):
            assert results[i].status_code == 200, results[i].text
            assert results[i].json()["path"] == p.name
            assert results[i].json()["score"] == pytest.approx(alone(model, p), abs=1e-5, rel=1e-5)
        metrics = httpx.get(f"{base}/metrics").json()
        assert metrics["batches"]["max_size"] > 1 and metrics["requests"]["by_status"] == {"200": len(images)}

        # SIGTERM while requests wait in the batcher: each is answered, then the process exits 0
        late: dict[int, httpx.Response] = {}
        threads = send(images[:3], late)
        while httpx.get(f"{base}/metrics").json()["requests"]["in_flight"] < 3:
            assert time.time() < deadline and all(t.is_alive() for t in threads), "requests finished before SIGTERM"
            time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(60)
        assert proc.wait(60) == 0, open(tmp_path / "server.log").read()
        assert "stopped on SIGTERM" in open(tmp_path / "server.log").read()
        assert [late[i].status_code for i in range(3)] == [200, 200, 200]
        for i in range(3):
            assert late[i].json()["score"] == pytest.approx(results[i].json()["score"], abs=1e-6)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()


# ----------------------------------------------------------------------------------------------- issue 19, item 9
def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (no pixel data: the service must refuse it before decoding)."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + chunk(b"IEND", b"")


def test_every_error_has_one_shape_and_oversized_images_one_wording(model, recwarn):
    import re

    from fastapi.testclient import TestClient

    with TestClient(create_app(model)) as client:
        for method, path, status in (("get", "/nope", 404), ("get", "/predict", 405), ("post", "/health", 405)):
            r = getattr(client, method)(path)
            assert r.status_code == status, (path, r.text)
            assert set(r.json()) == {"error"} and path in r.json()["error"], r.text
        texts = []
        for side in (10_000, 20_000):  # 100 M pixels: over our limit; 400 M: also over PIL's bomb limit
            r = client.post("/predict", content=png_header(side, side))
            assert r.status_code == 413, (side, r.text)
            texts.append(re.sub(r"[\d,]+ pixels is", "N pixels is", r.json()["error"]))
            assert f"{side * side:,}" in r.json()["error"]
        assert texts[0] == texts[1]
    from PIL import Image

    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]


def test_port_in_use_fails_in_one_line_before_serving(model_dir):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        r = CliRunner().invoke(cli_app, ["serve", str(model_dir), "--port", str(port), "--device", "cpu"])
    assert r.exit_code == 2, r.output
    assert len(r.output.strip().splitlines()) == 1 and str(port) in r.output and "serving" not in r.output
