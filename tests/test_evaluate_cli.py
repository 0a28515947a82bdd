"""The evaluation path: official vs our mask geometry, the models' evaluation-score hook, and `anomalens evaluate`
with prompt-based models (per-category class words, --shots as k_shot, metrics.json saying what ran)."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from typer.testing import CliRunner

import anomalens
from anomalens import metrics
from anomalens.cli.main import app
from anomalens.data import ImageTransform, MVTecAD, load_mask
from anomalens.data.class_names import class_name
from anomalens.evaluation import official_mask
from conftest import tiny_patchcore

runner = CliRunner()
WINCLIP = ["--model", "winclip", "--set", "backbone=ViT-S-16", "--set", "weights=None", "--set", "image_size=96", "--device", "cpu"]


# ------------------------------------------------------------------------------------------- mask geometry
def slow_bilinear_upsample(mask01: np.ndarray, factor: int) -> np.ndarray:
    """PIL / torchvision bilinear for an integer upscale: half-pixel centres, edge pixels clamped; one loop per pixel."""
    h, w = mask01.shape
    out = np.zeros((h * factor, w * factor))
    for y in range(h * factor):
        for x in range(w * factor):
            sy = min(max((y + 0.5) / factor - 0.5, 0.0), h - 1.0)
            sx = min(max((x + 0.5) / factor - 0.5, 0.0), w - 1.0)
            y0, x0 = int(np.floor(sy)), int(np.floor(sx))
            y1, x1 = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
            fy, fx = sy - y0, sx - x0
            out[y, x] = ((1 - fy) * (1 - fx) * mask01[y0, x0] + (1 - fy) * fx * mask01[y0, x1]
                         + fy * (1 - fx) * mask01[y1, x0] + fy * fx * mask01[y1, x1])
    return out


def test_official_mask_geometry_against_a_slow_reference():
    """A hand-made 6x6 mask up to an 12x12 map: == 1 (MVTec) keeps only fully covered pixels, > 0 (VisA) every touched
    one, ours (nearest) the 2x2 blocks in between; the weights are dyadic, so the reference is exact."""
    mask = np.zeros((6, 6), dtype=bool)
    mask[1:4, 2:5] = True
    mask[5, 0] = True  # a lone pixel at the border
    ref = slow_bilinear_upsample(mask.astype(np.float64), 2)
    squash = ImageTransform(resize=(12, 12), crop=None)
    for transform in (None, squash):
        eq = official_mask(mask, (12, 12), "eq255", transform)
        gt = official_mask(mask, (12, 12), "gt0", transform)
        assert np.array_equal(eq, ref == 1.0) and np.array_equal(gt, ref > 0)
    ours = squash.mask(mask).numpy()
    assert np.array_equal(ours, np.kron(mask, np.ones((2, 2), dtype=bool)))  # ours: nearest, unchanged
    assert (eq <= ours).all() and (ours <= gt).all()
    assert eq.sum() < ours.sum() < gt.sum()  # the geometries differ exactly at the defect's edges
    with pytest.raises(ValueError, match="eq255"):
        official_mask(mask, (12, 12), ">0.5")


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    """Two small MVTec-layout categories, one with an underscore in its folder name."""
    from anomalens.data.synthetic import make_synthetic_dataset

    root = make_synthetic_dataset(tmp_path_factory.mktemp("tiny"), categories=("disc", "weave"), defects=("hole",),
                                  n_train=4, n_test_good=2, n_test_per_defect=2, size=64, seed=1)
    (root / "disc").rename(root / "metal_nut")
    return root


def test_evaluate_mask_geometries(tiny_root):
    """"ours" = the masks as the model's transform makes them (today's numbers); "official" = the per-image official
    masks at the map size, MVTec rule; both recorded in the report."""
    det = tiny_patchcore(geometry="whole", resize=40).fit(MVTecAD(tiny_root, "weave", "train"))  # 64 px -> 40: edges blur
    test = MVTecAD(tiny_root, "weave", "test")
    ours, official = anomalens.evaluate(det, test), anomalens.evaluate(det, test, mask_geometry="official")
    raw = [load_mask(r.mask_path) if r.mask_path else np.zeros((64, 64), bool) for r in test.records]
    expect_ours = np.stack([det.transform.mask(m).numpy() for m in raw])
    size = ours.prediction.anomaly_maps.shape[-2:]
    expect_official = np.stack([official_mask(m, size, "eq255", det.transform) for m in raw])
    assert np.array_equal(ours.prediction.masks, expect_ours)
    assert np.array_equal(official.prediction.masks, expect_official)
    assert not np.array_equal(expect_ours, expect_official)
    maps, scores, labels = ours.prediction.anomaly_maps, ours.prediction.image_scores, ours.prediction.gt_labels
    assert ours.metrics == pytest.approx(metrics.compute(scores, labels, maps, expect_ours), nan_ok=True)
    assert official.metrics == pytest.approx(metrics.compute(scores, labels, maps, expect_official), nan_ok=True)
    assert ours.to_dict()["mask_geometry"] == "ours" and official.info["mask_geometry"] == "official"
    with pytest.raises(ValueError, match="mask_geometry"):
        anomalens.evaluate(det, test, mask_geometry="paper")


def test_score_hook_feeds_image_metrics_and_keeps_raw(tiny_root):
    det = tiny_patchcore(geometry="whole", resize=64).fit(MVTecAD(tiny_root, "weave", "train"))
    rep = anomalens.evaluate(det, MVTecAD(tiny_root, "weave", "test"), score_hook=lambda m, p: -p.image_scores)
    raw = rep.prediction.components["model_score"]
    assert np.allclose(rep.prediction.image_scores, -raw) and rep.prediction.labels is None
    assert rep.raw_metrics == pytest.approx(metrics.image_metrics(raw, rep.prediction.gt_labels))
    assert rep.metrics["image_auroc"] == pytest.approx(1 - rep.raw_metrics["image_auroc"], abs=1e-12)


# ------------------------------------------------------------------------------------------- anomalens evaluate
def test_class_words_follow_each_paper():
    assert class_name("winclip", "mvtec", "metal_nut") == "metal nut"
    assert class_name("winclip", "visa", "pipe_fryum") == "pipe fryum"
    assert class_name("clipad", "visa", "pipe_fryum") == "pipe_fryum"
    assert class_name("clipad", "mvtec", "metal_nut") == "metal_nut"


@pytest.fixture
def spy(monkeypatch):
    """Every model `anomalens evaluate` builds, with the settings it was built with."""
    built = []
    create = anomalens.create

    def spy_create(name, **settings):
        det = create(name, **settings)
        built.append((settings, det))
        return det

    monkeypatch.setattr(anomalens, "create", spy_create)
    return built


def test_winclip_zero_shot_gets_each_category_class_word(tiny_root, tmp_path, spy):
    r = runner.invoke(app, ["evaluate", str(tiny_root), *WINCLIP, "-o", str(tmp_path / "e")])
    assert r.exit_code == 0, r.output
    words = {s["class_name"] for s, _ in spy}
    assert words == {"metal nut", "weave"} and all(s["k_shot"] == 0 for s, _ in spy)
    m = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert m["shots"] == "zero-shot" and m["seed"] is None and m["mask_geometry"] == "ours"
    for cat, word in (("metal_nut", "metal nut"), ("weave", "weave")):
        run = m["runs"][cat]
        assert run["class_name"] == word and run["settings"]["class_name"] == word
        assert run["fit"] == "zero-shot" and run["fit_images"] == 0 and run["k_shot"] == 0 and run["shot_paths"] == []


def test_shots_set_k_shot_and_are_recorded(tiny_root, tmp_path, spy):
    r = runner.invoke(app, ["evaluate", str(tiny_root), *WINCLIP, "--category", "metal_nut", "--shots", "2", "--seed", "3",
                            "--mask-geometry", "official", "-o", str(tmp_path / "e")])
    assert r.exit_code == 0, r.output
    (settings, det), = spy
    drawn = MVTecAD(tiny_root, "metal_nut", "train").sample(2, 3).paths
    assert settings["k_shot"] == 2 and det.k_shot == 2 and det.reference_paths_ == drawn  # WinCLIP+ really ran
    m = json.loads((tmp_path / "e" / "metrics.json").read_text())
    run = m["runs"]["metal_nut"]
    assert m["shots"] == 2 and m["seed"] == 3 and m["mask_geometry"] == "official"
    assert run["fit"] == "2-shot" and run["k_shot"] == 2 and run["seed"] == 3 and run["shot_paths"] == drawn
    assert run["mask_geometry"] == "official" and run["class_name"] == "metal nut"
    rows = list(csv.DictReader(open(tmp_path / "e" / "metrics.csv")))
    assert rows and all(row["mask_geometry"] == "official" for row in rows)


def test_user_class_name_wins_and_contradictions_fail(tiny_root, tmp_path, spy):
    r = runner.invoke(app, ["evaluate", str(tiny_root), *WINCLIP, "--set", "class_name=widget", "-o", str(tmp_path / "e")])
    assert r.exit_code == 0, r.output
    assert [s["class_name"] for s, _ in spy] == ["widget", "widget"]
    for args, msg in ((["--shots", "2", "--set", "k_shot=1"], "contradicts"), (["--mask-geometry", "paper"], "mask-geometry"),
                      (["--shots", "-1"], "shots")):
        r = runner.invoke(app, ["evaluate", str(tiny_root), *WINCLIP, *args, "-o", str(tmp_path / "x")])
        assert r.exit_code == 2 and msg in r.output, r.output


def test_clipad_gets_verbatim_names_dataset_and_its_paper_image_score(tiny_root, tmp_path, spy):
    from test_clipad import TINY as CLIPAD_TINY

    from anomalens.models.clipad import clipad_minmax_scores

    sets = [a for k, v in CLIPAD_TINY.items() if k != "device" for a in ("--set", f"{k}={v}")]
    r = runner.invoke(app, ["evaluate", str(tiny_root), "--model", "clipad", "--category", "metal_nut", *sets,
                            "--device", "cpu", "-o", str(tmp_path / "e")])
    assert r.exit_code == 0, r.output
    (settings, det), = spy
    assert settings["class_name"] == "metal_nut" and settings["dataset"] == "mvtec"
    run = json.loads((tmp_path / "e" / "metrics.json").read_text())["runs"]["metal_nut"]
    assert run["class_name"] == "metal_nut" and run["settings"]["dataset"] == "mvtec"
    assert run["image_score"] == "evaluation hook" and set(run["raw_metrics"]) == set(metrics.IMAGE_KEYS)
    rep = anomalens.evaluate(det, MVTecAD(tiny_root, "metal_nut", "test"))  # the same model again: same route
    table = json.loads((tmp_path / "e" / "metrics.json").read_text())["metrics"]["metal_nut"]
    official = metrics.image_metrics(clipad_minmax_scores(rep.prediction), rep.prediction.gt_labels)
    for k, v in official.items():
        assert table[k] == pytest.approx(v, abs=1e-9)
