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
        model.save(tmp_path / "m")
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


def test_device_resolution():
    assert anomalens.resolve_device("auto").type in ("cpu", "cuda")
    assert anomalens.resolve_device("cpu").type == "cpu"
    with pytest.raises(anomalens.AnomalensError):
        anomalens.resolve_device("tpu:0")
    if not torch.cuda.is_available():
        with pytest.raises(anomalens.AnomalensError, match="CUDA is not available"):
            anomalens.resolve_device("cuda")


def test_fit_without_data_only_for_zero_shot():
    with pytest.raises(ValueError, match="needs normal images"):
        tiny_patchcore().fit()
