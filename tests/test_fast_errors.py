"""Validation before torch (issue 19, item 4): every command's typical user errors answer in one line, exit 2, and
without importing torch; `report` and a fully resumed `benchmark` never import it."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[1] / "src")
# one subprocess runs the cases in order and says, per case, whether torch got imported and how long it took
RUNNER = """
import json, sys, time
from typer.testing import CliRunner
from anomalens.cli import app
r = CliRunner()
for args in json.loads(sys.argv[1]):
    t = time.perf_counter()
    res = r.invoke(app, args)
    print(json.dumps({"args": args, "code": res.exit_code, "out": res.output, "s": time.perf_counter() - t,
                      "torch": "torch" in sys.modules}), flush=True)
"""


def run_cases(cases: list[list[str]], cwd: Path) -> list[dict]:
    env = dict(os.environ, PYTHONPATH=SRC, ANOMALENS_PROGRESS="0")
    p = subprocess.run([sys.executable, "-c", RUNNER, json.dumps(cases)], cwd=cwd, env=env, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    return [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]


def user_error_cases(tmp: Path) -> list[list[str]]:
    (tmp / "empty").mkdir()
    (tmp / "model").mkdir()
    (tmp / "model" / "config.json").write_text(json.dumps({"format": "anomalens-model", "settings": {"batch_size": 8}}))
    (tmp / "model" / "model.safetensors").write_bytes(b"")
    m = str(tmp / "model")
    return [
        ["fit", "nodata", "-o", "m"], ["fit", "empty", "-o", "m"], ["fit", "empty", "-o", "m", "--holdout", "2"],
        ["fit", ".", "-o", "m", "--dataset", "mvtex"], ["fit", ".", "-o", "m", "--model", "patchcor"],
        ["fit", ".", "-o", "m", "--set", "oops"], ["fit", ".", "-o", "m", "--set", "coreset_ratio=5"],
        ["fit", ".", "-o", "m", "--set", "no_such=1"], ["fit", ".", "-o", "m", "--set", "layers=3"],
        ["fit", ".", "-o", "m", "--device", "tpu"], ["fit", ".", "-o", "m", "--dataset", "mvtec"],
        ["predict", "nomodel", "x.png"], ["predict", m, "nothere.png"], ["predict", m, "x.png", "--format", "xml"],
        ["predict", m, "empty", "--set", "coreset_ratio=0.5"],
        ["evaluate", "noroot"], ["evaluate", ".", "--mask-geometry", "x"], ["evaluate", ".", "--shots", "-1"],
        ["evaluate", ".", "--dataset", "folder"], ["evaluate", ".", "--set", "coreset_ratio=0"],
        ["demo", "--device", "tpu"], ["demo", "--n-train", "1"],
        ["benchmark", "--dataset", "mvtec", "--root", "noroot", "-o", "b"],
        ["benchmark", "--dataset", "mvtex", "--root", ".", "-o", "b"],
        ["benchmark", "--dataset", "mvtec", "--root", ".", "-o", "b", "--seeds", "a,b"],
        ["report", "norun"], ["report", "no[run]"],
        ["export", "nomodel"], ["export", m, "-o", "x.onn"],
        ["serve", "nomodel"], ["serve", m, "--port", "99999"], ["serve", m, "--set", "coreset_ratio=1"],
        ["train", "clipad", "noroot", "-o", "t"], ["train", "clipad", ".", "-o", "t", "--dataset", "x"],
        ["train-generator", "noroot", "--category", "c", "--defect", "d", "-o", "g"],
        ["generate", "nogen", "x.png", "-n", "1", "-o", "g"], ["generate", "empty", "nothere.png", "-n", "1", "-o", "g"],
        ["evaluate-generator", "nogen", "noroot"],
        ["models", "nosuch"], ["datasets", "download", "nosuch", "--root", "d"],
    ]


def test_user_errors_answer_before_torch_in_one_line(tmp_path):
    cases = user_error_cases(tmp_path)
    results = run_cases(cases, tmp_path)
    assert [r["args"] for r in results] == cases
    for r in results:
        assert r["code"] == 2, r
        assert r["out"].startswith("error: ") and len(r["out"].strip().splitlines()) == 1, r
        assert not r["torch"], f"{' '.join(r['args'])} imported torch before answering: {r['out']}"
        assert r["s"] < 3.0, r  # well under 1 s on an idle machine; the bound leaves room for a busy one
    assert "no[run]" in next(r["out"] for r in results if r["args"] == ["report", "no[run]"])  # literal text
    assert sorted(os.listdir(tmp_path)) == ["empty", "model"]  # nothing written by a refused command


def test_mask_geometries_and_base_ranges_match_the_torch_side():
    from anomalens.catalogue import BASE_RANGES
    from anomalens.cli.evaluate import MASK_GEOMETRIES
    from anomalens.detector import Detector
    from anomalens.evaluation import MASK_GEOMETRIES as EVAL

    assert MASK_GEOMETRIES == EVAL and BASE_RANGES == Detector.setting_ranges


def test_layout_categories_equal_the_datasets(synthetic_root):
    from anomalens.data import MVTecAD
    from anomalens.data.layout import mvtec_categories

    assert mvtec_categories(synthetic_root) == MVTecAD.categories(synthetic_root)


TINY = {"backbone": "resnet18", "weights": None, "resize": 72, "crop": 64, "coreset_ratio": 0.5, "batch_size": 4}


def test_report_and_a_resumed_benchmark_never_import_torch(tmp_path, synthetic_root):
    from anomalens.benchmark import run_benchmark

    out = tmp_path / "run"
    run_benchmark("mvtec", synthetic_root, ["patchcore"], out, ["weave"], overrides=TINY, device="cpu")
    sets = [a for k, v in TINY.items() for a in ("--set", f"{k}={v}")]
    results = run_cases([["benchmark", "--dataset", "mvtec", "--root", str(synthetic_root), "--category", "weave",
                          "-o", str(out), "--device", "cpu", "--force", *sets],
                         ["report", str(out), "-o", str(tmp_path / "r.html")]], tmp_path)
    for r in results:
        assert r["code"] == 0, r
        assert not r["torch"], f"{r['args'][0]} imported torch"
    assert "done earlier" in results[0]["out"] and (tmp_path / "r.html").is_file()
