"""The detector contract: registry, fit/predict/calibrate, save/load round trip, format errors, atomic writes."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import anomalens
from anomalens.data import MVTecAD
from anomalens.errors import ModelFormatError, NotFittedError, UnknownModelError
from anomalens.io import atomic_path

from conftest import tiny_patchcore


def test_registry_lists_and_creates():
    assert "patchcore" in anomalens.list_models()
    m = anomalens.create("patchcore", coreset_ratio=0.01)
    assert m.coreset_ratio == 0.01 and m.backbone == "wide_resnet50_2"  # spec default kept
    with pytest.raises(UnknownModelError, match="available: .*patchcore"):
        anomalens.create("nosuchmodel")
    with pytest.raises(anomalens.AnomalensError, match="no setting"):
        anomalens.create("patchcore", not_a_setting=1)


def test_predict_before_fit_says_what_to_call():
    with pytest.raises(NotFittedError, match=r"call fit"):
        tiny_patchcore().predict(torch.rand(1, 3, 64, 64))


def test_prediction_contract(synthetic_root):
    model = tiny_patchcore().fit(MVTecAD(synthetic_root, "disc", "train"))
    pred = model.predict(MVTecAD(synthetic_root, "disc", "test"))
    n = len(MVTecAD(synthetic_root, "disc", "test"))
    assert pred.image_scores.shape == (n,) and pred.image_scores.dtype == np.float64
    assert pred.anomaly_maps.shape == (n, 64, 64) and pred.anomaly_maps.dtype == np.float32
    assert pred.labels is None  # no threshold yet
    assert len(pred.paths) == n and pred.masks.shape == (n, 64, 64)
    assert pred.info["random_init"] is True and "random-init" in pred.info["warning"]


def test_calibrate_uses_normals_only_and_sets_labels(synthetic_root):
    train = MVTecAD(synthetic_root, "weave", "train")
    model = tiny_patchcore().fit(train.subset(range(8)))
    model.calibrate(train.subset(range(8, 12)), fpr=0.0)
    held = model.predict(train.subset(range(8, 12)))
    assert model.threshold_ == pytest.approx(held.image_scores.max())
    assert not held.labels.any()
    with pytest.raises(ValueError, match="normal images only"):
        model.calibrate(MVTecAD(synthetic_root, "weave", "test"))


def test_save_load_identical_predictions(synthetic_root, tmp_path):
    model = tiny_patchcore().fit(MVTecAD(synthetic_root, "grain", "train"))
    model.calibrate(MVTecAD(synthetic_root, "grain", "train").subset(range(4)))
    test = MVTecAD(synthetic_root, "grain", "test")
    before = model.predict(test)
    model.save(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["format_version"] == 1 and cfg["model"] == "patchcore" and cfg["threshold"] == model.threshold_
    loaded = anomalens.load(tmp_path / "m")
    after = loaded.predict(test)
    assert np.array_equal(before.image_scores, after.image_scores)
    assert np.array_equal(before.anomaly_maps, after.anomaly_maps)
    assert np.array_equal(before.labels, after.labels)
    assert loaded.threshold_ == model.threshold_


def test_load_errors(tmp_path, synthetic_root):
    with pytest.raises(ModelFormatError, match="no saved model"):
        anomalens.load(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelFormatError, match="config.json"):
        anomalens.load(tmp_path / "empty")
    model = tiny_patchcore().fit(MVTecAD(synthetic_root, "disc", "train").subset(range(2)))
    model.save(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg["format_version"] = 99
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelFormatError, match="version 99"):
        anomalens.load(tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text("{not json")
    with pytest.raises(ModelFormatError, match="corrupt"):
        anomalens.load(tmp_path / "m")


def test_save_is_atomic_on_crash(tmp_path, synthetic_root, monkeypatch):
    model = tiny_patchcore().fit(MVTecAD(synthetic_root, "disc", "train").subset(range(2)))
    model.save(tmp_path / "m")
    original = (tmp_path / "m" / "model.safetensors").read_bytes()
    import safetensors.torch

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        model.save(tmp_path / "m", overwrite=True)
    assert (tmp_path / "m" / "model.safetensors").read_bytes() == original  # old model intact
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no temp debris


def test_atomic_path_replaces_file(tmp_path):
    target = tmp_path / "x.json"
    target.write_text("old")
    with pytest.raises(KeyError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise KeyError("crash")
    assert target.read_text() == "old"
    with atomic_path(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new"


def test_evaluate_returns_report(synthetic_root):
    model = tiny_patchcore().fit(MVTecAD(synthetic_root, "disc", "train"))
    rep = anomalens.evaluate(model, MVTecAD(synthetic_root, "disc", "test"))
    assert set(rep.metrics) == set(anomalens.metrics.ALL_KEYS)
    assert rep.category == "disc" and rep.n_anomalous == 10 and "random-init" in str(rep)
    with pytest.raises(anomalens.DataError, match="labelled"):
        anomalens.evaluate(model, torch.rand(2, 3, 64, 64))


def test_device_resolution(monkeypatch):
    for cuda in (False, True):  # "auto" / None follow CUDA's presence, whichever machine runs the test
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
        assert anomalens.resolve_device("auto") == anomalens.resolve_device(None) == torch.device("cuda" if cuda else "cpu")
    monkeypatch.undo()
    assert anomalens.resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert anomalens.resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(anomalens.AnomalensError):
        anomalens.resolve_device("tpu:0")
    if not torch.cuda.is_available():
        with pytest.raises(anomalens.AnomalensError, match="CUDA is not available"):
            anomalens.resolve_device("cuda")


def test_fit_without_data_only_for_zero_shot():
    with pytest.raises(ValueError, match="needs normal images"):
        tiny_patchcore().fit()


# ---- issue 10: a new user's first hour -------------------------------------------------------------------------
def _fitted_tiny(synthetic_root, n=2):
    return tiny_patchcore().fit(MVTecAD(synthetic_root, "disc", "train").subset(range(n)))


def test_save_refuses_a_folder_that_is_not_a_model(tmp_path, synthetic_root):
    model = _fitted_tiny(synthetic_root)
    user = tmp_path / "photos"
    user.mkdir()
    (user / "keep.png").write_bytes(b"precious")
    for overwrite in (False, True):  # not even overwrite=True replaces a user's folder
        with pytest.raises(anomalens.AnomalensError, match="not an anomalens model"):
            model.save(user, overwrite=overwrite)
    assert (user / "keep.png").read_bytes() == b"precious" and sorted(p.name for p in user.iterdir()) == ["keep.png"]
    (tmp_path / "afile").write_text("x")
    with pytest.raises(anomalens.AnomalensError, match="is a file"):
        model.save(tmp_path / "afile", overwrite=True)
    assert (tmp_path / "afile").read_text() == "x"
    (tmp_path / "empty").mkdir()
    model.save(tmp_path / "empty")  # an empty folder is fine
    assert anomalens.load(tmp_path / "empty").is_fitted


def test_replacing_a_model_needs_overwrite_and_keeps_foreign_files(tmp_path, synthetic_root):
    model = _fitted_tiny(synthetic_root)
    model.save(tmp_path / "m")
    with pytest.raises(anomalens.AnomalensError, match="overwrite=True"):
        model.save(tmp_path / "m")
    model.threshold_ = 1.25
    model.save(tmp_path / "m", overwrite=True)
    assert anomalens.load(tmp_path / "m").threshold_ == 1.25
    (tmp_path / "m" / "notes.txt").write_text("mine")
    with pytest.raises(anomalens.AnomalensError, match="notes.txt"):
        model.save(tmp_path / "m", overwrite=True)
    assert (tmp_path / "m" / "notes.txt").read_text() == "mine"


def test_saved_files_get_umask_permissions(tmp_path, synthetic_root):
    import os
    import stat

    old = os.umask(0o022)
    try:
        _fitted_tiny(synthetic_root).save(tmp_path / "m")
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in [tmp_path / "m", *(tmp_path / "m").iterdir()]}
    assert modes == {"m": 0o755, "config.json": 0o644, "model.safetensors": 0o644}


@pytest.mark.parametrize("settings,needle", [
    ({"coreset_ratio": "abc"}, r"coreset_ratio='abc' must be a number"),
    ({"coreset_ratio": 0.0}, r"coreset_ratio=0.0 is out of range.*\(0, 1\]"),
    ({"batch_size": 0}, r"batch_size=0 is out of range"),
    ({"patch_size": 2.5}, r"patch_size=2.5 must be an integer"),
    ({"resize": "big"}, r"resize='big' must be"),
])
def test_settings_are_validated_when_the_model_is_created(settings, needle):
    from anomalens.errors import SettingError

    with pytest.raises(SettingError, match=needle):
        anomalens.create("patchcore", **settings)
    with pytest.raises(SettingError, match=needle):  # direct construction is checked the same way
        anomalens.registry.get_entry("patchcore").cls(**settings)


@pytest.mark.parametrize("name,settings,needle", [
    ("winclip", {"k_shot": "2"}, "k_shot='2' must be an integer"),
    ("winclip", {"scales": [2, "x"]}, "scales=.* must be a list of integers"),
    ("musc", {"x_max": "a lot"}, "x_max='a lot' must be a number"),
    ("musc", {"r_list": 3}, "r_list=3 must be a list of integers"),
])
def test_every_model_validates_its_settings(name, settings, needle):
    from anomalens.errors import SettingError

    with pytest.raises(SettingError, match=needle):
        anomalens.create(name, **settings)


def test_valid_settings_of_every_kind_are_accepted():
    m = anomalens.create("patchcore", resize=[224, 224], crop=None, coreset_ratio=1, device=torch.device("cpu"))
    assert (m.resize, m.crop, m.coreset_ratio, m.device_) == ([224, 224], None, 1, torch.device("cpu"))
    ens = anomalens.create("patchcore", backbone=["resnet18", "resnet18"], layers=[["layer2"], ["layer3"]], weights=None)
    assert ens.members() == [("resnet18", ["layer2"]), ("resnet18", ["layer3"])]  # the lists arrive as given, paired
    assert anomalens.create("winclip", scales=[2], weights=None).scales == [2]
    for entry in anomalens.registry.model_entries():  # every registered default passes its own checks, kept as declared
        import inspect

        defaults = {k: p.default for k, p in inspect.signature(entry.cls.__init__).parameters.items() if k != "self"}
        assert entry.cls().get_params() == {k: anomalens.detector._jsonable(v) for k, v in defaults.items()}


def test_saved_config_with_a_wrong_typed_setting_does_not_load(tmp_path, synthetic_root):
    _fitted_tiny(synthetic_root).save(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg["settings"]["coreset_ratio"] = "abc"
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelFormatError, match=r"config.json.*coreset_ratio='abc'"):
        anomalens.load(tmp_path / "m")


def test_calibration_records_size_and_rates(synthetic_root):
    train = MVTecAD(synthetic_root, "weave", "train")
    model = tiny_patchcore().fit(train.subset(range(6)))
    with pytest.warns(UserWarning, match=r"6 calibration images cannot resolve fpr=0.01.*needs >= 100.*0.143"):
        model.calibrate(train.subset(range(6, 12)), fpr=0.01)
    cal = model.calibration_
    scores = model.predict(train.subset(range(6, 12))).image_scores
    assert cal["n_images"] == 6 and cal["fpr_requested"] == 0.01
    assert cal["fpr_empirical"] == pytest.approx(np.mean(scores > model.threshold_))
    assert cal["fpr_achievable"] == pytest.approx(1 / 7)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 6 images resolve 0.2: no warning
        model.calibrate(train.subset(range(6, 12)), fpr=0.2)
    assert model.calibration_["fpr_empirical"] <= 0.2


def test_calibrate_refuses_one_image_and_bad_rates(synthetic_root):
    train = MVTecAD(synthetic_root, "weave", "train")
    model = tiny_patchcore().fit(train.subset(range(4)))
    with pytest.raises(anomalens.DataError, match="at least 2"):
        model.calibrate(train.subset([5]))
    for fpr in (-0.1, 1.0, "0.1"):
        with pytest.raises(anomalens.AnomalensError, match="fpr"):
            model.calibrate(train.subset(range(4, 8)), fpr=fpr)


def test_print_prediction_is_a_summary_and_calibrate_prints_nothing(synthetic_root, capsys):
    train = MVTecAD(synthetic_root, "weave", "train")
    model = tiny_patchcore().fit(train.subset(range(4)))
    capsys.readouterr()
    model.calibrate(train.subset(range(4, 12)), fpr=0.2)
    assert capsys.readouterr() == ("", "")
    assert repr(model) == ("PatchCore(backbone='resnet18', weights=None, geometry='paper', resize=72, crop=64, coreset_ratio=0.5, "
                           "batch_size=4, device='cpu')")
    pred = model.predict(MVTecAD(synthetic_root, "weave", "test"))
    text = str(pred)
    assert "\n" not in text and "array" not in text and len(text) < 200
    n_anom = int(pred.labels.sum())
    assert f"{len(pred)} images" in text and f"{n_anom} anomalous" in text and f"{model.threshold_:.4g}" in text
    assert f"{pred.image_scores.min():.4g}" in text and "random-init" in text
    print(pred)
    assert capsys.readouterr().out.strip() == text


@pytest.mark.parametrize("name,settings", [
    ("patchcore", dict(backbone="resnet18", weights=None, resize=64, coreset_ratio=0.5)),  # default (auto): aspect kept
    ("patchcore", dict(backbone="resnet18", weights=None, resize=64, geometry="whole")),  # squashed: one size
    ("patchcore", dict(backbone="resnet18", weights=None, resize=32, geometry="tiles", tile=40, overlap=8)),  # native tiles
    ("winclip", dict(backbone="ViT-S-16", weights=None, image_size=64, geometry="tiles", tile=40, k_shot=1)),
    ("clipad", dict(backbone="ViT-S-16", weights=None, image_size=64, geometry="aspect")),
    ("musc", dict(backbone="ViT-S-16", weights=None, image_size=96)),
])
def test_every_model_fits_and_scores_a_folder_of_mixed_sizes(tmp_path, name, settings):
    from PIL import Image

    sizes = [(64, 64), (48, 96), (80, 60), (48, 96), (64, 64)]
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate(sizes):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    model = anomalens.create(name, device="cpu", batch_size=2, **settings).fit(str(tmp_path))
    pred = model.predict(str(tmp_path))
    assert pred.image_scores.shape == (5,) and np.isfinite(pred.image_scores).all() and np.isfinite(pred.anomaly_maps).all()
    assert [m.shape for m in pred.maps_at_original_size()] == sizes


# ---- issue 25: the calibration contract, exactly --------------------------------------------------------------
class _KnownScores(anomalens.Detector):
    """A fitted stub whose `predict(scores)` returns those scores: calibrate's arithmetic, isolated."""

    name = "known-scores"

    def __init__(self, batch_size: int = 1):
        self.batch_size = batch_size
        self.fitted_ = True

    def predict(self, data):
        s = np.asarray(data, dtype=np.float64)
        return anomalens.Prediction(image_scores=s, anomaly_maps=np.zeros((len(s), 1, 1), np.float32), labels=None,
                                    paths=[f"{i}.png" for i in range(len(s))])


@pytest.mark.parametrize("n", [3, 4, 7, 99, 100])
@pytest.mark.parametrize("fpr", [0.01, 0.2, 0.3])
def test_calibrate_threshold_is_the_stated_order_statistic(n, fpr):
    """The threshold is the (1 − fpr) quantile of the n calibration scores rounded up to a score ('higher'):
    0-based order statistic k = ceil((n − 1)(1 − fpr)), computed here in exact fractions on sorted scores. At most
    a share fpr of the calibration scores lies above it, and the small-set warning appears exactly when n < 1/fpr."""
    import math
    import warnings
    from fractions import Fraction

    scores = np.random.default_rng(n * 1000 + int(fpr * 100)).permutation(np.linspace(-3.0, 5.0, n) ** 3)
    k = math.ceil((n - 1) * (1 - Fraction(str(fpr))))
    expected = sorted(scores.tolist())[k]
    small = n < 1 / Fraction(str(fpr))
    model = _KnownScores()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.calibrate(scores, fpr=fpr)
    small_warnings = [w for w in caught if "calibration images cannot resolve" in str(w.message)]
    assert len(small_warnings) == int(small), [str(w.message) for w in caught]
    assert model.threshold_ == expected
    above = sum(s > expected for s in scores.tolist())
    assert above == n - 1 - k and Fraction(above, n) <= Fraction(str(fpr))
    assert model.calibration_["fpr_empirical"] == pytest.approx(above / n) and model.calibration_["fpr_empirical"] <= fpr
    assert model.calibration_["n_images"] == n and model.calibration_["fpr_achievable"] == pytest.approx(1 / (n + 1))


# ---- issue 25: atomic replace, tested at the swap ---------------------------------------------------------------
def test_overwrite_that_fails_at_the_swap_keeps_the_old_model(tmp_path, synthetic_root, monkeypatch):
    """save(path, overwrite=True) moves the old model aside, then renames the new one in: when that second rename
    fails the old model is put back; load(path) scores as the old model and no temporary folder remains."""
    from conftest import fail_swap, tmp_debris

    train = MVTecAD(synthetic_root, "disc", "train")
    old, new = tiny_patchcore().fit(train.subset(range(4))), tiny_patchcore().fit(train.subset(range(4, 12)))
    test = MVTecAD(synthetic_root, "disc", "test").subset(range(4))
    old_scores, new_scores = old.predict(test).image_scores, new.predict(test).image_scores
    assert not np.allclose(old_scores, new_scores)  # the two models are told apart by their predictions
    old.save(tmp_path / "m")
    fail_swap(monkeypatch, tmp_path / "m")
    with pytest.raises(OSError, match="injected"):
        new.save(tmp_path / "m", overwrite=True)
    monkeypatch.undo()
    assert np.array_equal(anomalens.load(tmp_path / "m").predict(test).image_scores, old_scores)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"] and tmp_debris(tmp_path) == []
    new.save(tmp_path / "m", overwrite=True)  # and the swap, when it works, installs the new model
    assert np.array_equal(anomalens.load(tmp_path / "m").predict(test).image_scores, new_scores)
