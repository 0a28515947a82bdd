"""Download MVTec AD / VisA: resumable (HTTP Range), checked against the published SHA-256, extracted, layout-checked;
VisA also linked into its `1cls` split in MVTec layout.

Checksums: the SHA-256 values are the ones anomalib publishes (MVTec AD, VisA) and that independent downloads
report for the same archive sizes; the VisA `1cls.csv` digest is that of amazon-science/spot-diff@2a692ab (equal to
the copy shipped inside the VisA archive). They could not be re-verified from this machine (no internet): see
`verified` on each entry.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import tarfile
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from ..errors import DataError

CHUNK = 1 << 20
MVTEC_CATEGORIES = ("bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut", "pill", "screw",
                    "tile", "toothbrush", "transistor", "wood", "zipper")
VISA_CATEGORIES = ("candle", "capsules", "cashew", "chewinggum", "fryum", "macaroni1", "macaroni2", "pcb1", "pcb2", "pcb3",
                   "pcb4", "pipe_fryum")


@dataclass(frozen=True)
class RemoteFile:
    """A published file: URLs (first = primary, then mirrors), file name, SHA-256, size in bytes when known."""

    urls: tuple[str, ...]
    filename: str
    sha256: str
    size: Optional[int] = None
    verified: str = "published checksum; not re-verified offline"


@dataclass(frozen=True)
class DatasetSource:
    """What to fetch for a dataset and how to check the extracted layout."""

    name: str
    archive: RemoteFile
    categories: tuple[str, ...]
    split_csv: Optional[RemoteFile] = None  # VisA: split_csv/1cls.csv
    extra: dict = field(default_factory=dict)


SOURCES = {
    "mvtec": DatasetSource("mvtec", RemoteFile(
        ("https://www.mydrive.ch/shares/38536/3830184030e49fe74747669442f0f282/download/420938113-1629952094/"
         "mvtec_anomaly_detection.tar.xz",
         "https://www.mydrive.ch/shares/150996/b52ecdcbf521176e9db9c731f2304b27/download/420938113-1629960298/"
         "mvtec_anomaly_detection.tar.xz"),
        "mvtec_anomaly_detection.tar.xz", "cf4313b13603bec67abb49ca959488f7eedce2a9f7795ec54446c649ac98cd3d", 5_264_982_680,
        "anomalib's DOWNLOAD_INFO hashsum; the same digest and size are reported by independent downloads"),
        MVTEC_CATEGORIES),
    "visa": DatasetSource("visa", RemoteFile(
        ("https://amazon-visual-anomaly.s3.us-west-2.amazonaws.com/VisA_20220922.tar",),
        "VisA_20220922.tar", "2eb8690c803ab37de0324772964100169ec8ba1fa3f7e94291c9ca673f40f362", 1_929_840_640,
        "anomalib's DOWNLOAD_INFO hashsum; the same digest and size are reported by independent downloads"),
        VISA_CATEGORIES,
        split_csv=RemoteFile(
            ("https://raw.githubusercontent.com/amazon-science/spot-diff/2a692ab575001cbde74d402d897a7286086c6199/"
             "split_csv/1cls.csv",),
            "1cls.csv", "a48557e6033318cb90556f706196bc9d247a776a23ea51aecee5a80dd0332995", None,
            "digest of spot-diff@2a692ab split_csv/1cls.csv, checked against a local copy of the official file")),
}

Log = Callable[[str], None]


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _fetch(url: str, part: Path, timeout: float) -> None:
    """Append the rest of `url` to `part` (HTTP Range from its current size; restart when the server ignores it)."""
    offset = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # nothing left to send: the partial file is already whole
            return
        raise
    with resp:
        mode = "ab" if (offset and resp.status == 206) else "wb"
        with open(part, mode) as fh:
            while True:
                block = resp.read(CHUNK)
                if not block:
                    break
                fh.write(block)


def download(remote: RemoteFile, dest: Path, log: Log = lambda m: None, timeout: float = 60.0) -> Path:
    """Download `remote` to `dest` (resuming `dest.part`), verify its SHA-256; a mismatch removes the partial file."""
    dest = Path(dest)
    if dest.is_file():
        if sha256_of(dest) == remote.sha256:
            log(f"{dest.name}: already downloaded, checksum OK")
            return dest
        raise DataError(f"{dest} exists but its SHA-256 is not the published {remote.sha256}; move it away and retry")
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    errors = []
    for url in remote.urls:
        have = part.stat().st_size if part.exists() else 0
        log(f"{dest.name}: downloading {url}" + (f" (resuming at {have:,} bytes)" if have else ""))
        try:
            _fetch(url, part, timeout)
            break
        except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError, OSError) as exc:
            errors.append(f"{url}: {type(exc).__name__}: {exc}")
    else:
        got = part.stat().st_size if part.exists() else 0
        raise DataError(f"download of {dest.name} failed or was interrupted after {got:,} bytes ({'; '.join(errors)}); "
                        f"run the same command again to resume from {part}")
    got = part.stat().st_size
    if remote.size is not None and got < remote.size:
        raise DataError(f"download of {dest.name} stopped at {got:,} of {remote.size:,} bytes; run again to resume")
    digest = sha256_of(part)
    if digest != remote.sha256:
        part.unlink()
        raise DataError(f"checksum mismatch for {dest.name}: SHA-256 {digest}, published {remote.sha256}; "
                        f"the downloaded file was removed (run again to download it afresh)")
    os.replace(part, dest)
    return dest


def extract(archive: Path, root: Path, log: Log = lambda m: None) -> None:
    """Extract a tar archive (any compression) into `root` once; a marker file records completion."""
    marker = root / f".{archive.name}.extracted"
    if marker.is_file():
        log(f"{archive.name}: already extracted")
        return
    log(f"{archive.name}: extracting into {root}")
    try:
        with tarfile.open(archive) as tf:
            tf.extractall(root, filter="data")  # no absolute paths, no links out of root
    except (tarfile.TarError, EOFError) as exc:
        raise DataError(f"cannot extract {archive}: {exc}") from exc
    marker.write_text("ok\n")


def check_mvtec_layout(root: Path, categories) -> None:
    """Every category has train/good, test/ and ground_truth/ with images."""
    for cat in categories:
        for sub in ("train/good", "test", "ground_truth"):
            d = root / cat / sub
            if not d.is_dir() or not any(d.iterdir()):
                raise DataError(f"MVTec AD layout check failed: {d} is missing or empty")


def check_visa_layout(root: Path, split_csv: Path) -> list[dict]:
    """Every image and mask listed in the split file exists; returns its rows."""
    import csv

    with open(split_csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or not {"object", "split", "label", "image", "mask"} <= set(rows[0]):
        raise DataError(f"{split_csv} is not a VisA split file (columns object, split, label, image, mask)")
    missing = [p for r in rows for p in (r["image"], r["mask"]) if p and not (root / p).is_file()]
    if missing:
        raise DataError(f"VisA layout check failed: {len(missing)} file(s) listed in {split_csv} are missing, "
                        f"first {root / missing[0]}")
    return rows


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        return
    try:
        os.link(src, dst)
    except OSError:  # another filesystem, or no hard links: copy
        shutil.copy2(src, dst)


def convert_visa_1cls(root: Path, rows: list[dict], out: Path) -> Path:
    """The `1cls` split in MVTec layout (as spot-diff's prepare_data.py): <object>/{train/good, test/good, test/bad,
    ground_truth/bad}, files hard-linked (copied across filesystems)."""
    for r in rows:
        img = root / r["image"]
        normal = r["label"] == "normal"
        split = r["split"]
        _link(img, out / r["object"] / split / ("good" if normal else "bad") / img.name)
        if not normal and r["mask"]:
            mask = root / r["mask"]
            _link(mask, out / r["object"] / "ground_truth" / "bad" / (img.stem + mask.suffix))
    return out


def prepare_dataset(name: str, root, convert: bool = True, log: Log = lambda m: None,
                    sources: Optional[dict] = None, timeout: float = 60.0) -> Path:
    """Download, verify, extract and check `name` (mvtec | visa) under `root`; returns the dataset root to use."""
    sources = SOURCES if sources is None else sources
    if name not in sources:
        raise DataError(f"unknown dataset {name!r}: choose from {', '.join(sorted(sources))}")
    src = sources[name]
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise DataError(f"--root {root} exists and is not a folder")
    root.mkdir(parents=True, exist_ok=True)
    archive = download(src.archive, root / ".downloads" / src.archive.filename, log, timeout)
    extract(archive, root, log)
    if src.split_csv is None:
        check_mvtec_layout(root, src.categories)
        log(f"layout OK: {len(src.categories)} categories")
        return root
    split = root / "split_csv" / src.split_csv.filename
    if not split.is_file():  # older archives lack split_csv/: fetch the official file
        download(src.split_csv, split, log, timeout)
    elif sha256_of(split) != src.split_csv.sha256:
        raise DataError(f"{split} differs from the official split file (SHA-256 {src.split_csv.sha256})")
    rows = check_visa_layout(root, split)
    log(f"layout OK: {len(rows)} files listed in {split.name} present")
    if convert:
        out = convert_visa_1cls(root, rows, root / "visa_1cls")
        log(f"1cls split in MVTec layout: {out}")
    return root
