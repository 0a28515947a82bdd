"""`anomalens datasets download` against a local HTTP server (in a thread) serving small fake archives."""
from __future__ import annotations

import csv
import hashlib
import io
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from anomalens.data.download import SOURCES, DatasetSource, RemoteFile, download, prepare_dataset
from anomalens.errors import DataError


def _png(value: int, size: int = 16) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((size, size), value, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _tar(files: dict[str, bytes], mode: str = "w:xz") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


MVTEC_FILES = {"bottle/train/good/000.png": _png(10), "bottle/train/good/001.png": _png(20),
               "bottle/test/good/000.png": _png(30), "bottle/test/broken/000.png": _png(200),
               "bottle/ground_truth/broken/000_mask.png": _png(255), "license.txt": b"fake\n"}


class Server:
    """Serves byte blobs by path, honours Range, records requests; `cut_after` closes a reply after N bytes."""

    def __init__(self, blobs: dict[str, bytes]):
        self.blobs, self.requests, self.cut_after = blobs, [], None
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # quiet
                pass

            def do_GET(self):
                outer.requests.append((self.path, self.headers.get("Range")))
                data = outer.blobs.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                start = 0
                rng = self.headers.get("Range")
                if rng:
                    start = int(rng.split("=")[1].split("-")[0])
                    if start >= len(data):
                        self.send_error(416)
                        return
                body = data[start:]
                self.send_response(206 if rng else 200)
                if rng:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if outer.cut_after is not None:
                    self.wfile.write(body[: outer.cut_after])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server({})
    yield s
    s.close()


def _remote(server, path: str, data: bytes, sha: str | None = None, size: bool = True) -> RemoteFile:
    server.blobs[path] = data
    return RemoteFile((server.url(path),), Path(path).name, sha or hashlib.sha256(data).hexdigest(), len(data) if size else None)


def test_mvtec_download_extract_and_layout(server, tmp_path):
    from anomalens.data import MVTecAD

    arc = _tar(MVTEC_FILES)
    src = {"mvtec": DatasetSource("mvtec", _remote(server, "/mvtec.tar.xz", arc), ("bottle",))}
    root = prepare_dataset("mvtec", tmp_path / "mvtec", sources=src)
    assert (root / ".downloads" / "mvtec.tar.xz").read_bytes() == arc
    ds = MVTecAD(root, "bottle", "test")
    assert len(ds) == 2 and ds.has_masks and list(ds.labels) == [1, 0]
    n = len(server.requests)
    prepare_dataset("mvtec", tmp_path / "mvtec", sources=src)  # second call: nothing fetched again
    assert len(server.requests) == n


def test_wrong_checksum_is_an_error_and_the_file_is_removed(server, tmp_path):
    src = {"mvtec": DatasetSource("mvtec", _remote(server, "/m.tar.xz", _tar(MVTEC_FILES), sha="0" * 64), ("bottle",))}
    with pytest.raises(DataError, match="checksum mismatch"):
        prepare_dataset("mvtec", tmp_path / "r", sources=src)
    assert not list((tmp_path / "r" / ".downloads").iterdir())


def test_interrupted_download_resumes_with_range(server, tmp_path):
    data = bytes(np.random.default_rng(0).integers(0, 256, 300_000, dtype=np.uint8))
    remote = _remote(server, "/blob.bin", data)
    server.cut_after = 100_000
    with pytest.raises(DataError, match="resume"):
        download(remote, tmp_path / "blob.bin")
    part = tmp_path / "blob.bin.part"
    assert part.stat().st_size == 100_000 and not (tmp_path / "blob.bin").exists()
    server.cut_after = None
    download(remote, tmp_path / "blob.bin")
    assert server.requests[-1][1] == "bytes=100000-"
    assert (tmp_path / "blob.bin").read_bytes() == data and not part.exists()


def test_server_without_range_support_restarts_cleanly(server, tmp_path):
    data = b"x" * 5000 + b"y" * 5000
    remote = _remote(server, "/f.bin", data)
    (tmp_path / "f.bin.part").write_bytes(b"garbage")
    orig = server.httpd.RequestHandlerClass.do_GET

    def no_range(self):  # a server that ignores Range answers 200 with the whole file
        del self.headers["Range"]
        orig(self)

    server.httpd.RequestHandlerClass.do_GET = no_range
    download(remote, tmp_path / "f.bin")
    assert (tmp_path / "f.bin").read_bytes() == data


def _visa_blobs(missing: bool = False):
    files, rows = {}, []
    for i in range(3):
        p = f"candle/Data/Images/Normal/{i:04d}.JPG"
        files[p] = _png(40 + i)
        rows.append(["candle", "train" if i < 2 else "test", "normal", p, ""])
    p, m = "candle/Data/Images/Anomaly/000.JPG", "candle/Data/Masks/Anomaly/000.png"
    files[p], files[m] = _png(220), _png(1)  # VisA masks hold small non-zero values
    rows.append(["candle", "test", "anomaly", p, m])
    if missing:
        rows.append(["candle", "test", "anomaly", "candle/Data/Images/Anomaly/999.JPG", ""])
    buf = io.StringIO()
    csv.writer(buf).writerows([["object", "split", "label", "image", "mask"], *rows])
    return files, buf.getvalue().encode()


def test_visa_split_layout_check_and_1cls_conversion(server, tmp_path):
    from anomalens.data import MVTecAD, VisA

    files, split = _visa_blobs()
    src = {"visa": DatasetSource("visa", _remote(server, "/VisA.tar", _tar(files, "w")), ("candle",),
                                 split_csv=_remote(server, "/1cls.csv", split))}
    root = prepare_dataset("visa", tmp_path / "visa", sources=src)
    assert len(VisA(root, "candle", "test")) == 2  # the split file was fetched next to the images
    conv = MVTecAD(root / "visa_1cls", "candle", "test")
    assert sorted(conv.labels) == [0, 1] and conv.has_masks
    assert len(MVTecAD(root / "visa_1cls", "candle", "train")) == 2
    sample = next(s for s in conv if s.label == 1)
    assert sample.mask.any()


def test_visa_layout_check_names_a_missing_file(server, tmp_path):
    files, split = _visa_blobs(missing=True)
    files["split_csv/1cls.csv"] = split  # shipped inside the archive, as the official tar does
    src = {"visa": DatasetSource("visa", _remote(server, "/VisA.tar", _tar(files, "w")), ("candle",),
                                 split_csv=RemoteFile(("http://127.0.0.1:9/none",), "1cls.csv",
                                                      hashlib.sha256(split).hexdigest()))}
    with pytest.raises(DataError, match="999.JPG"):
        prepare_dataset("visa", tmp_path / "visa", sources=src)


def test_published_sources_are_complete():
    for name, src in SOURCES.items():
        assert src.archive.urls[0].startswith("https://") and len(src.archive.sha256) == 64
        int(src.archive.sha256, 16)
    assert len(SOURCES["mvtec"].categories) == 15 and len(SOURCES["visa"].categories) == 12


@pytest.mark.integration
def test_visa_split_checksum_matches_the_official_file(assets):
    from anomalens.data.download import sha256_of

    assert sha256_of(assets / "visa-splits" / "split_csv" / "1cls.csv") == SOURCES["visa"].split_csv.sha256


def test_cli_unknown_dataset_is_one_line(tmp_path):
    from anomalens.cli import app

    r = CliRunner().invoke(app, ["datasets", "download", "nosuch", "--root", str(tmp_path)])
    assert r.exit_code == 2 and "nosuch" in r.output and len(r.output.strip().splitlines()) == 1
