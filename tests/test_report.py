"""`anomalens report`: one self-contained HTML page from a benchmark run or a fit / evaluate / predict folder;
checked as text and, when Debian's chromium and playwright are present, in a real headless browser."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from anomalens.benchmark import load_results, run_benchmark
from anomalens.cli import app

TINY = {"backbone": "resnet18", "weights": None, "resize": 72, "crop": 64, "coreset_ratio": 0.5, "batch_size": 4}
TINY_ARGS = [a for k, v in TINY.items() for a in ("--set", f"{k}={v}")]
CHROMIUM = Path("/usr/bin/chromium")
BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync"]
runner = CliRunner()


@pytest.fixture(scope="module")
def bench_run(synthetic_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("rep") / "run"
    run_benchmark("mvtec", synthetic_root, ["patchcore"], out, ["weave", "disc"], overrides=TINY, device="cpu")
    return out


@pytest.fixture(scope="module")
def bench_html(bench_run, tmp_path_factory):
    html = tmp_path_factory.mktemp("html") / "report.html"
    r = runner.invoke(app, ["report", str(bench_run), "-o", str(html)])
    assert r.exit_code == 0, r.output
    return html


def expected_strings(run_dir: Path) -> list[str]:
    """Every category and every metric value (percent, one decimal, as shown) of the results files."""
    out = []
    for rec in load_results(run_dir):
        out.append(rec["category"])
        for v in {**rec["metrics"], **rec["extra_metrics"]}.values():
            if v is not None:
                out.append(f"{100 * v:.1f}")
    return out


def _text(html: str) -> str:
    return re.sub(r"<[^>]+>", " ", html)


def test_benchmark_report_shows_every_category_and_value(bench_run, bench_html):
    html = bench_html.read_text()
    text = _text(html)
    for s in expected_strings(bench_run):
        assert s in text, s
    assert html.count("<svg") >= 1 + 3 * 2  # bars + (ROC, PRO, threshold) per category
    assert "worst false positives" in html and "data:image/jpeg;base64," in html


def test_report_is_self_contained(bench_html):
    html = bench_html.read_text()
    assert "<script" not in html
    refs = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert refs and all(r.startswith("data:") for r in refs)
    assert not re.search(r"url\(\s*['\"]?https?:", html)


def test_report_of_evaluate_predict_and_fit_folders(synthetic_root, tmp_path):
    model_dir, ev, pr = tmp_path / "model", tmp_path / "eval", tmp_path / "pred"
    assert runner.invoke(app, ["fit", str(synthetic_root), "--dataset", "mvtec", "--category", "weave", "-o", str(model_dir),
                               "--device", "cpu", *TINY_ARGS]).exit_code == 0
    assert runner.invoke(app, ["evaluate", str(synthetic_root), "--category", "weave", "-o", str(ev), "--shots", "4",
                               "--device", "cpu", *TINY_ARGS]).exit_code == 0
    assert runner.invoke(app, ["predict", str(model_dir), str(synthetic_root / "weave" / "test" / "hole"), "-o", str(pr)]).exit_code == 0
    table = json.loads((ev / "metrics.json").read_text())["metrics"]
    for folder, must in ((ev, ["weave", *[f"{100 * v:.1f}" for v in table["weave"].values()]]),
                         (pr, ["000.png", "001.png"]), (model_dir, ["resnet18", "threshold"])):
        out = tmp_path / f"{folder.name}.html"
        r = runner.invoke(app, ["report", str(folder), "-o", str(out)])
        assert r.exit_code == 0, r.output
        text = _text(out.read_text())
        for s in must:
            assert s in text, (folder.name, s)


def _one_line_error(args, *names):
    r = runner.invoke(app, args)
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1, r.output
    for n in names:
        assert n in r.output.replace("\n", ""), r.output


def test_missing_or_half_written_run_dir_is_one_line(bench_run, tmp_path):
    out = str(tmp_path / "r.html")
    _one_line_error(["report", str(tmp_path / "absent"), "-o", out], "absent")
    (tmp_path / "empty").mkdir()
    _one_line_error(["report", str(tmp_path / "empty"), "-o", out], "empty")
    only_manifest = tmp_path / "started"
    only_manifest.mkdir()
    shutil.copy(bench_run / "manifest.json", only_manifest)
    _one_line_error(["report", str(only_manifest), "-o", out], "no finished")
    torn = tmp_path / "torn"
    shutil.copytree(bench_run, torn)
    p = torn / "results" / "patchcore" / "disc.json"
    p.write_text(p.read_text()[:200])
    _one_line_error(["report", str(torn), "-o", out], "disc.json")
    (tmp_path / "ev").mkdir()
    (tmp_path / "ev" / "metrics.json").write_text('{"model": "patchcore", "metr')
    _one_line_error(["report", str(tmp_path / "ev"), "-o", out], "metrics.json")
    assert not Path(out).exists()


def _browser():
    if not CHROMIUM.is_file():
        pytest.skip(f"no browser at {CHROMIUM} (Debian package chromium)")
    return pytest.importorskip("playwright.sync_api", reason="playwright not installed (the report / test extra)")


def test_report_in_headless_chromium(bench_run, bench_html, tmp_path):
    """The page loads in a real browser without console or page errors, renders something (not a blank screenshot),
    and shows every category and metric value of the results files."""
    sync_api = _browser()
    import numpy as np
    from PIL import Image

    errors: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=BROWSER_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(bench_html.resolve().as_uri())
            page.wait_for_load_state("load")
            shot = tmp_path / "shot.png"
            page.screenshot(path=str(shot), full_page=True)
            text = page.inner_text("body")
            n_images = page.evaluate("Array.from(document.images).filter(i => i.complete && i.naturalWidth > 0).length")
        finally:
            browser.close()
    assert errors == []
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert pixels.std() > 5.0  # a blank page is one colour
    for s in expected_strings(bench_run):
        assert s in text, s
    assert n_images == 2 * 2 * 3  # every worst-case thumbnail decoded


def test_share_above_matches_a_direct_count():
    import numpy as np

    from anomalens.report.page import share_above

    rng = np.random.default_rng(0)
    v = rng.integers(0, 20, 300).astype(float)  # many ties
    t = np.unique(np.r_[v, -1.0, 25.0])
    assert np.allclose(share_above(v, t), [(v > x).mean() for x in t])


def test_report_of_a_demo_folder(tmp_path):
    out = tmp_path / "demo"
    r = runner.invoke(app, ["demo", "--out", str(out), "--category", "disc", "--n-train", "6", "--device", "cpu", "--random-init"])
    assert r.exit_code == 0, r.output
    m = json.loads((out / "metrics.json").read_text())["per_category"]["disc"]
    r = runner.invoke(app, ["report", str(out), "-o", str(tmp_path / "demo.html")])
    assert r.exit_code == 0, r.output
    html = (tmp_path / "demo.html").read_text()
    text = _text(html)
    for v in m["metrics"].values():
        assert f"{100 * v:.1f}" in text
    assert f"{m['threshold']:.4g}" in text and "data:image/jpeg;base64," in html  # calibrated threshold, overlays


def test_predictions_with_unreadable_images_are_reported(tmp_path):
    """A predict folder whose CSV holds an unreadable image's row (empty score, the reason in `error`) is a report,
    naming that image, not 'half-written or malformed'."""
    import csv as _csv

    from anomalens.deploy.stream import FIELDS

    d = tmp_path / "p"
    d.mkdir()
    with open(d / "predictions.csv", "w", newline="") as fh:
        w = _csv.DictWriter(fh, fieldnames=FIELDS)
        w.writeheader()
        w.writerow({"path": "a/good.png", "score": 0.25, "anomalous": "", "random_init": False, "error": "", "overlay": ""})
        w.writerow({"path": "a/broken.png", "score": "", "anomalous": "", "random_init": False,
                    "error": "DataError: corrupt or unreadable image", "overlay": ""})
    r = runner.invoke(app, ["report", str(d), "-o", str(tmp_path / "r.html")])
    assert r.exit_code == 0, r.output
    text = _text((tmp_path / "r.html").read_text())
    assert "good.png" in text and "broken.png" in text and "unreadable" in text
