"""`anomalens benchmark`: paper settings as data, per-category results equal to a direct evaluate, resume, bad input."""
from __future__ import annotations

import csv
import io
import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from anomalens.benchmark import MethodPreset, paper_numbers, plan_jobs, published_mean, register_preset, run_benchmark
from anomalens.benchmark import presets as presets_mod
from anomalens.benchmark import runner as runner_mod
from anomalens.cli import app

TINY = {"backbone": "resnet18", "weights": None, "resize": 72, "crop": 64, "coreset_ratio": 0.5, "batch_size": 4}
CATS = ["weave", "disc"]


def _run(root, out, methods=("patchcore",), **kw):
    return run_benchmark("mvtec", root, list(methods), out, kw.pop("categories", CATS), overrides=kw.pop("overrides", TINY),
                         device="cpu", **kw)


@pytest.fixture(scope="module")
def finished_run(synthetic_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "run"
    _run(synthetic_root, out)
    return out


@pytest.fixture
def test_presets():
    """Extra presets registered for one test (data-driven: no runner change needed), removed afterwards."""
    before = dict(presets_mod.PRESETS)
    yield register_preset
    presets_mod.PRESETS.clear()
    presets_mod.PRESETS.update(before)


def test_result_equals_direct_evaluate(finished_run, synthetic_root):
    """Per-category metrics are exactly those of fit + anomalens.evaluate with the same settings."""
    import anomalens
    from anomalens.data import MVTecAD

    rec = json.loads((finished_run / "results" / "patchcore" / "weave.json").read_text())
    det = anomalens.create("patchcore", device="cpu", **TINY).fit(MVTecAD(synthetic_root, "weave", "train"))
    rep = anomalens.evaluate(det, MVTecAD(synthetic_root, "weave", "test"))
    for k, v in rep.metrics.items():
        assert rec["metrics"][k] == pytest.approx(v, abs=1e-12), k
    assert rec["random_init"] is True and rec["n_images"] == rep.n_images
    assert [i["score"] for i in rec["images"]] == pytest.approx(list(rep.prediction.image_scores), abs=1e-6)


def test_exact_aupro_always_and_pro_variant_as_extra(finished_run, synthetic_root):
    from anomalens import metrics

    rec = json.loads((finished_run / "results" / "patchcore" / "disc.json").read_text())
    assert "aupro" in rec["metrics"] and "pro_musc" in rec["extra_metrics"]
    header = next(csv.reader(open(finished_run / "summary.csv")))
    assert {"aupro", "aupro_paper", "pro_musc", "pro_musc_paper_diff"} <= set(header)
    assert "AUPRO" in (finished_run / "summary.md").read_text() and "PRO-200step" in (finished_run / "summary.md").read_text()


def test_curve_points_integrate_to_the_metrics(finished_run):
    """The stored ROC points (not downsampled at this size) give back the AUROCs by the trapezoid rule."""
    rec = json.loads((finished_run / "results" / "patchcore" / "weave.json").read_text())
    fpr, tpr = rec["curves"]["image_roc"]
    assert np.trapezoid(tpr, fpr) == pytest.approx(rec["metrics"]["image_auroc"], abs=1e-4)
    fpr, pro = rec["curves"]["pro"]
    assert max(fpr) <= 0.3 + 1e-9 and all(np.diff(pro) >= -1e-9)


def test_summary_mean_row_is_the_mean_of_categories(finished_run):
    rows = list(csv.DictReader(open(finished_run / "summary.csv")))
    by = {r["category"]: r for r in rows}
    assert set(by) == {"weave", "disc", "mean"}
    for k in ("image_auroc", "pixel_auroc", "aupro", "pro_musc"):
        assert float(by["mean"][k]) == pytest.approx(np.mean([float(by[c][k]) for c in CATS]), abs=1e-6)


def test_worst_cases_are_extreme_scores(finished_run):
    rec = json.loads((finished_run / "results" / "patchcore" / "disc.json").read_text())
    normal = sorted((i["score"] for i in rec["images"] if i["label"] == 0), reverse=True)
    anomalous = sorted(i["score"] for i in rec["images"] if i["label"] == 1)
    assert [w["score"] for w in rec["worst"]["false_positives"]] == pytest.approx(normal[:3], abs=1e-5)
    assert [w["score"] for w in rec["worst"]["false_negatives"]] == pytest.approx(anomalous[:3], abs=1e-5)
    assert all((finished_run / "results" / "patchcore" / w["thumbnail"]).is_file() for w in rec["worst"]["false_positives"])


def test_manifest_records_versions_seeds_device_weights(finished_run):
    m = json.loads((finished_run / "manifest.json").read_text())
    assert m["kind"] == "anomalens-benchmark" and m["device"] == "cpu" and m["seeds"] == [0]
    assert {"anomalens", "torch", "open_clip_torch", "timm"} <= set(m["versions"])
    assert m["runs"]["patchcore"]["random_init"] is True and m["runs"]["patchcore"]["weights"] is None


def test_resume_reads_back_and_never_recomputes(finished_run, synthetic_root, monkeypatch, tmp_path):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(finished_run, out)
    before = (out / "summary.csv").read_text()
    calls = []
    real = runner_mod.evaluate_job
    monkeypatch.setattr(runner_mod, "evaluate_job", lambda job, *a: calls.append(job.category) or real(job, *a))
    _run(synthetic_root, out)
    assert calls == [] and (out / "summary.csv").read_text() == before
    (out / "results" / "patchcore" / "disc.json").unlink()
    _run(synthetic_root, out)
    assert calls == ["disc"]
    assert (out / "summary.csv").read_text() == before  # deterministic: the recomputed category is identical
    inv = json.loads((out / "manifest.json").read_text())["invocations"]
    assert inv[-1]["computed"] == ["patchcore/disc"] and inv[-1]["reused"] == ["patchcore/weave"]


def test_interrupted_run_loses_only_the_category_in_progress(synthetic_root, monkeypatch, tmp_path):
    real = runner_mod.evaluate_job
    state = {"n": 0}

    def flaky(job, *a):
        state["n"] += 1
        if state["n"] == 2:
            raise KeyboardInterrupt
        return real(job, *a)

    monkeypatch.setattr(runner_mod, "evaluate_job", flaky)
    with pytest.raises(KeyboardInterrupt):
        _run(synthetic_root, tmp_path / "run")
    done = sorted(p.name for p in (tmp_path / "run" / "results" / "patchcore").glob("*.json"))
    assert done == ["weave.json"]
    assert not list((tmp_path / "run").rglob("*.tmp"))  # no half-written file left
    monkeypatch.setattr(runner_mod, "evaluate_job", lambda job, *a: (calls.append(job.category), real(job, *a))[1])
    calls: list = []
    _run(synthetic_root, tmp_path / "run")
    assert calls == ["disc"]


def test_other_settings_in_the_same_folder_are_refused(finished_run, synthetic_root, tmp_path):
    import shutil

    from anomalens.errors import DataError

    out = tmp_path / "copy"
    shutil.copytree(finished_run, out)
    with pytest.raises(DataError, match="other settings"):
        _run(synthetic_root, out, overrides={**TINY, "coreset_ratio": 0.25})


def test_shot_draws_are_seeded_and_recorded(synthetic_root, tmp_path, test_presets):
    """A few-shot preset (registered as data) draws k train images per seed, as ImageDataset.sample does."""
    from anomalens.data import MVTecAD

    test_presets(MethodPreset("pc-shots", "patchcore", "shots", settings=lambda d, c, k: dict(TINY),
                              paper_setting=lambda s, k: f"{k}shot"))
    run_benchmark("mvtec", synthetic_root, ["pc-shots"], tmp_path / "r", ["weave"], shots=[2], seeds=[0, 1], device="cpu")
    recs = {s: json.loads((tmp_path / "r" / "results" / f"pc-shots-2shot-seed{s}" / "weave.json").read_text()) for s in (0, 1)}
    train = MVTecAD(synthetic_root, "weave", "train")
    for s, rec in recs.items():
        assert rec["shot_paths"] == train.sample(2, s).paths and rec["fit_images"] == 2
    assert recs[0]["shot_paths"] != recs[1]["shot_paths"]
    rows = list(csv.DictReader(open(tmp_path / "r" / "summary.csv")))
    weave = next(r for r in rows if r["category"] == "weave")
    assert weave["setting"] == "pc-shots-2shot" and weave["n_runs"] == "2"
    assert float(weave["image_auroc"]) == pytest.approx(np.mean([r["metrics"]["image_auroc"] for r in recs.values()]))


def test_postprocess_hook_replaces_image_scores_and_keeps_raw(synthetic_root, tmp_path, test_presets):
    """A preset's postprocess (CLIP-AD's min-max path) feeds the image metrics; the raw ones stay as *_raw."""
    test_presets(MethodPreset("pc-negated", "patchcore", "train", settings=lambda d, c, k: dict(TINY),
                              paper_setting=lambda s, k: "x", postprocess=lambda model, pred: -pred.image_scores))
    run_benchmark("mvtec", synthetic_root, ["pc-negated"], tmp_path / "r", ["weave"], device="cpu")
    rec = json.loads((tmp_path / "r" / "results" / "pc-negated" / "weave.json").read_text())
    assert rec["metrics"]["image_auroc"] == pytest.approx(1 - rec["extra_metrics"]["image_auroc_raw"], abs=1e-12)
    assert rec["metrics"]["pixel_auroc"] is not None


def test_plan_applies_settings_per_method_and_class_names():
    jobs = plan_jobs("mvtec", ["patchcore", "winclip", "musc"], ["metal_nut"], shots=[0, 2], seeds=[0, 1],
                     overrides={"weights": None, "patchcore.resize": 72, "winclip.image_size": 96})
    runs = defaultdict(list)
    for j in jobs:
        runs[j.run].append(j)
    assert sorted(runs) == ["musc", "patchcore", "winclip-0shot", "winclip-2shot-seed0", "winclip-2shot-seed1"]
    pc, wc = runs["patchcore"][0], runs["winclip-2shot-seed1"][0]
    assert pc.settings["resize"] == 72 and "image_size" not in pc.settings and pc.settings["weights"] is None
    assert wc.settings["image_size"] == 96 and wc.settings["k_shot"] == 2 and wc.seed == 1
    assert wc.settings["class_name"] == "metal nut"  # WinCLIP's class words (winclip.md §4)
    assert presets_mod.PRESETS["clipad"].settings("visa", "pipe_fryum", 0) == {
        "variant": "sdp", "class_name": "pipe_fryum", "dataset": "visa"}  # CLIP-AD: folder names verbatim


@pytest.mark.parametrize("overrides, match", [({"nonsense": 1}, "no method"), ({"patchcore.nonsense": 1}, "no setting"),
                                              ({"winclip.k_shot": 1}, "not in --methods")])
def test_bad_settings_fail_before_any_work(overrides, match):
    from anomalens.errors import AnomalensError

    with pytest.raises(AnomalensError, match=match):
        plan_jobs("mvtec", ["patchcore"], ["weave"], overrides=overrides)


@pytest.mark.parametrize("args, name", [(["--category", "nosuch"], "nosuch"), (["--methods", "nosuch"], "nosuch")])
def test_cli_bad_input_is_one_line_exit_2_and_nothing_written(synthetic_root, tmp_path, args, name):
    out = tmp_path / "run"
    r = CliRunner().invoke(app, ["benchmark", "--dataset", "mvtec", "--root", str(synthetic_root), "-o", str(out), *args])
    assert r.exit_code == 2 and name in r.output and len(r.output.strip().splitlines()) == 1, r.output
    assert not out.exists()


def test_bad_input_leaves_an_existing_run_untouched(finished_run, synthetic_root):
    before = {p: p.read_bytes() for p in finished_run.rglob("*") if p.is_file()}
    r = CliRunner().invoke(app, ["benchmark", "--dataset", "mvtec", "--root", str(synthetic_root), "--category", "nosuch",
                                 "-o", str(finished_run)])
    assert r.exit_code == 2
    assert {p: p.read_bytes() for p in finished_run.rglob("*") if p.is_file()} == before


def test_visa_layout_runs_from_the_split_file(synthetic_root, tmp_path):
    """A VisA root (split_csv/1cls.csv over the images) benchmarks the objects the split file lists."""
    from anomalens.data import MVTecAD

    root = tmp_path / "visa"
    (root / "split_csv").mkdir(parents=True)
    (root / "weave").symlink_to(synthetic_root / "weave")
    lines = ["object,split,label,image,mask"]
    for split in ("train", "test"):
        for rec in MVTecAD(synthetic_root, "weave", split).records:
            rel = lambda p: str(Path(p).relative_to(synthetic_root))  # noqa: E731
            label = "normal" if rec.label == 0 else "anomaly"
            lines.append(f"weave,{split},{label},{rel(rec.path)},{rel(rec.mask_path) if rec.mask_path else ''}")
    (root / "split_csv" / "1cls.csv").write_text("\n".join(lines) + "\n")
    run_benchmark("visa", root, ["patchcore"], tmp_path / "run", overrides=TINY, device="cpu")
    rec = json.loads((tmp_path / "run" / "results" / "patchcore" / "weave.json").read_text())
    assert rec["dataset"] == "visa" and rec["n_images"] == len(MVTecAD(synthetic_root, "weave", "test"))


def test_cli_missing_root_is_one_line(tmp_path):
    r = CliRunner().invoke(app, ["benchmark", "--dataset", "mvtec", "--root", str(tmp_path / "absent"), "-o", str(tmp_path / "o")])
    assert r.exit_code == 2 and "absent" in r.output and len(r.output.strip().splitlines()) == 1


def test_cli_runs_and_resumes(synthetic_root, tmp_path):
    args = ["benchmark", "--dataset", "mvtec", "--root", str(synthetic_root), "--methods", "patchcore", "--category", "weave",
            "--device", "cpu", "-o", str(tmp_path / "run")] + [a for k, v in TINY.items() for a in ("--set", f"{k}={v}")]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    r2 = CliRunner().invoke(app, args)
    assert r2.exit_code == 0 and "read back" in r2.output


def test_paper_means_agree_with_their_categories():
    """Transcription check: every printed mean is the mean of its per-category values (the papers' own rounding and
    known inconsistencies stay within 0.25 points)."""
    groups = defaultdict(dict)
    for (method, setting, dataset, cat, metric, source), v in paper_numbers().items():
        groups[(method, setting, dataset, metric, source)][cat] = v
    checked = 0
    for key, cats in groups.items():
        if "mean" in cats and len(cats) > 2:
            vals = [v for c, v in cats.items() if c != "mean"]
            assert abs(np.mean(vals) - cats["mean"]) < 0.0025, key
            checked += 1
    assert checked > 50


def test_published_mean_over_a_subset_is_the_subset_mean():
    full = published_mean("winclip", "0shot", "mvtec", ["bottle", "cable"], "image_auroc")
    assert full == pytest.approx((0.992 + 0.865) / 2)
    every = [c for (m, s, d, c, k, src) in paper_numbers() if (m, s, d, k, src) == ("winclip", "0shot", "mvtec", "image_auroc", "paper")]
    assert published_mean("winclip", "0shot", "mvtec", [c for c in every if c != "mean"], "image_auroc") == pytest.approx(0.918)
    assert published_mean("winclip", "0shot", "mvtec", ["weave"], "image_auroc") is None
    assert not math.isnan(paper_numbers()[("musc", "default", "mvtec", "mean", "pro_musc", "official")])


def _fake_record(method, setting, paper_setting, cat, metrics, seed=0, extra=None):
    return {"method": method, "setting": setting, "paper_setting": paper_setting, "dataset": "mvtec", "category": cat,
            "seed": seed, "random_init": False, "metrics": metrics, "extra_metrics": extra or {}}


def test_summary_puts_published_numbers_and_differences_next_to_ours():
    from anomalens.benchmark.summary import summary_csv, summary_markdown, summary_table

    recs = [_fake_record("patchcore", "patchcore", "coreset10", c, {"image_auroc": v, "aupro": 0.9}, extra={"pro_musc": 0.8})
            for c, v in (("bottle", 0.99), ("cable", 0.95))]
    t = summary_table(recs)[0]
    bottle, mean = t["rows"][0], t["rows"][-1]
    assert bottle["paper"]["image_auroc"] == pytest.approx(1.0) and bottle["official"]["image_auroc"] == pytest.approx(1.0)
    assert bottle["paper"]["aupro"] == pytest.approx(0.961) and bottle["paper"]["pro_musc"] is None  # like for like
    assert mean["paper"]["image_auroc"] == pytest.approx((1.0 + 0.994) / 2)  # subset: mean of those categories
    rows = {r["category"]: r for r in csv.DictReader(io.StringIO(summary_csv(summary_table(recs))))}
    assert float(rows["cable"]["image_auroc_paper_diff"]) == pytest.approx(0.95 - 0.994, abs=1e-6)
    assert "95.0 (paper 99.4, -4.4" in summary_markdown(summary_table(recs))


def test_help_of_new_commands():
    for args in (["benchmark", "--help"], ["report", "--help"], ["datasets", "download", "--help"]):
        r = CliRunner().invoke(app, args)
        assert r.exit_code == 0 and "Usage" in r.output


def test_clipad_runs_in_its_paper_setting_with_the_minmax_score(synthetic_root, tmp_path):
    """CLIP-AD through the benchmark: settings from the preset, image metrics on the per-category min-max sum of
    p_abn and map_max (the official metrics), the raw p_abn + map_max kept as *_raw."""
    import anomalens
    from anomalens import metrics
    from anomalens.data import MVTecAD
    from anomalens.models.clipad.estimator import clipad_minmax_scores
    from test_clipad import TINY as CLIPAD_TINY

    tiny = {k: v for k, v in CLIPAD_TINY.items() if k != "device"}
    run_benchmark("mvtec", synthetic_root, ["clipad"], tmp_path / "r", ["disc"], overrides=tiny, device="cpu")
    rec = json.loads((tmp_path / "r" / "results" / "clipad" / "disc.json").read_text())
    assert rec["settings"]["variant"] == "sdp" and rec["settings"]["class_name"] == "disc" and rec["settings"]["dataset"] == "mvtec"
    assert rec["paper_setting"] == "sdp" and rec["fit_images"] == 0
    det = anomalens.create("clipad", class_name="disc", dataset="mvtec", device="cpu", **tiny)
    rep = anomalens.evaluate(det, MVTecAD(synthetic_root, "disc", "test"))
    official = metrics.image_metrics(clipad_minmax_scores(rep.prediction), rep.prediction.gt_labels)
    for k, v in official.items():
        assert rec["metrics"][k] == pytest.approx(v, abs=1e-9)
        assert rep.metrics[k] == pytest.approx(v, abs=1e-9)  # one route: evaluate() applies the model's hook too
        raw = metrics.image_metrics(rep.prediction.components["model_score"], rep.prediction.gt_labels)
        assert rec["extra_metrics"][f"{k}_raw"] == pytest.approx(raw[k], abs=1e-9) == rep.raw_metrics[k]
    assert rec["metrics"]["pixel_auroc"] == pytest.approx(rep.metrics["pixel_auroc"], abs=1e-9)


@pytest.mark.integration
def test_real_mvtec_images_get_paper_and_official_columns(assets, tmp_path):
    """mvtec-reduced hazelnut / transistor under their MVTec names, PatchCore with the real ImageNet EfficientNet-Lite0:
    the summary carries the paper's and the official code's numbers for those categories, with ours − published."""
    root = tmp_path / "mvtec"
    root.mkdir()
    for cat in ("hazelnut", "transistor"):
        (root / cat).symlink_to(assets / "mvtec-reduced" / f"{cat}_reduced")
    settings = {"backbone": "tf_efficientnet_lite0", "weights": "imagenet", "resize": 128, "crop": None}  # small: fast
    run_benchmark("mvtec", root, ["patchcore"], tmp_path / "run", overrides=settings, device="cpu")
    rows = {r["category"]: r for r in csv.DictReader(open(tmp_path / "run" / "summary.csv"))}
    h = rows["hazelnut"]
    assert float(h["image_auroc_paper"]) == pytest.approx(1.0) and float(h["pixel_auroc_paper"]) == pytest.approx(0.987)
    assert float(h["aupro_paper"]) == pytest.approx(0.939) and h["pro_musc_paper"] == ""
    assert float(h["image_auroc_official"]) > 0.99
    # EfficientNet-Lite0 is not the paper's WRN-50-2: the paper's numbers are shown, no difference is (issue 19 item 10)
    assert h["backbone"] == "tf_efficientnet_lite0" and h["comparable_with_paper"] == "False"
    for k in ("image_auroc", "pixel_auroc", "aupro"):
        assert h[f"{k}_paper_diff"] == "" and float(h[k]) > 0.5
    assert float(rows["mean"]["pixel_auroc_paper"]) == pytest.approx((0.987 + 0.964) / 2)  # subset mean
    assert json.loads((tmp_path / "run" / "manifest.json").read_text())["runs"]["patchcore"]["random_init"] is False


def test_patchcore_low_shot_preset_draws_seeded_shots_and_meets_table_s5(synthetic_root, tmp_path):
    """patchcore-fewshot: k seeded normals per category (k = 0 refused), the shots recorded, the summary keyed to the
    paper's Table S5 row of the same coreset and k (a mean-only table: compared on whole-dataset runs only)."""
    from anomalens.data import MVTecAD
    from anomalens.data.download import MVTEC_CATEGORIES
    from anomalens.errors import AnomalensError

    with pytest.raises(AnomalensError, match="--shots must be >= 1"):
        plan_jobs("mvtec", ["patchcore-fewshot"], ["weave"], shots=[0])
    assert [j.shots for j in plan_jobs("mvtec", ["patchcore-fewshot"], ["weave"])] == [1, 2, 5, 10, 16, 20, 50]
    out = tmp_path / "run"
    _run(synthetic_root, out, methods=("patchcore-fewshot",), categories=["weave"], shots=[2], seeds=[0, 1])
    recs = [json.loads(p.read_text()) for p in sorted((out / "results").rglob("weave.json"))]
    assert len(recs) == 2 and all(r["fit_images"] == 2 and r["paper_setting"] == "coreset0.5-2shot" for r in recs)
    train = {str(p) for p in MVTecAD(synthetic_root, "weave", "train").paths}
    draws = [tuple(r["shot_paths"]) for r in recs]
    assert all(set(d) <= train for d in draws) and draws[0] != draws[1]  # seeded draws differ per seed
    # the published mean applies only when every MVTec category is in the run
    assert published_mean("patchcore", "coreset10-2shot", "mvtec", list(MVTEC_CATEGORIES), "image_auroc") == pytest.approx(0.864)
    assert published_mean("patchcore", "coreset10-2shot", "mvtec", ["bottle"], "image_auroc") is None


def test_another_backbone_than_the_papers_is_said_next_to_the_paper_columns():
    """Issue 19 item 10: summary.md, summary.csv and the HTML report say which backbone ran and mark the paper
    columns as not comparable when it is not the paper's (not only manifest.json)."""
    from anomalens.benchmark.summary import paper_backbone, summary_csv, summary_markdown, summary_table
    from anomalens.report.page import _summary_section

    def recs(backbone):
        out = [_fake_record("patchcore", "patchcore", "coreset10", c, {"image_auroc": v}) for c, v in (("bottle", 0.99), ("cable", 0.95))]
        for r in out:
            r["model"], r["settings"] = "patchcore", {"backbone": backbone}
        return out

    paper = paper_backbone(recs("x")[0])
    assert paper  # the paper setting names its backbone (the model's default)
    same, other = summary_table(recs(paper))[0], summary_table(recs("tf_efficientnet_lite0"))[0]
    assert same["comparable"] and not other["comparable"]
    md_same, md_other = summary_markdown([same]), summary_markdown([other])
    assert "not comparable" not in md_same and "tf_efficientnet_lite0" not in md_same
    head = next(line for line in md_other.splitlines() if line.startswith("## "))
    assert "tf_efficientnet_lite0" in head and paper in head and "not comparable" in head
    assert "(paper 99.4, not comparable" in md_other and "-4.4" not in md_other
    rows = {r["category"]: r for r in csv.DictReader(io.StringIO(summary_csv([other])))}
    assert rows["cable"]["comparable_with_paper"] == "False" and rows["cable"]["image_auroc_paper_diff"] == ""
    assert rows["cable"]["backbone"] == "tf_efficientnet_lite0" and rows["cable"]["paper_backbone"] == paper
    html = "".join(_summary_section([other]))  # the HTML report's summary section of a benchmark run
    assert "tf_efficientnet_lite0" in html and "not comparable" in html


def test_results_and_manifest_survive_a_failed_swap(finished_run, synthetic_root, monkeypatch, tmp_path):
    """Issue 25: a result JSON and the manifest are renamed into place; when that rename fails the previous file
    stays as it was (or absent), no temporary file remains, and the next run computes just the missing result."""
    import shutil

    from conftest import fail_swap, tmp_debris

    out = tmp_path / "copy"
    shutil.copytree(finished_run, out)
    manifest = (out / "manifest.json").read_text()
    fail_swap(monkeypatch, out / "manifest.json")
    with pytest.raises(OSError, match="injected"):
        _run(synthetic_root, out)
    assert (out / "manifest.json").read_text() == manifest and tmp_debris(out) == []
    monkeypatch.undo()

    result = out / "results" / "patchcore" / "disc.json"
    result.unlink()
    fail_swap(monkeypatch, result)
    with pytest.raises(OSError, match="injected"):
        _run(synthetic_root, out)
    assert not result.exists() and tmp_debris(out) == []
    monkeypatch.undo()
    calls = []
    real = runner_mod.evaluate_job
    monkeypatch.setattr(runner_mod, "evaluate_job", lambda job, *a: calls.append(job.category) or real(job, *a))
    _run(synthetic_root, out)
    assert calls == ["disc"] and json.loads(result.read_text())["category"] == "disc"
