"""ONNX export: onnxruntime equals the torch model (scores and maps), dynamic batch, loads without torch, side file."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

import anomalens  # noqa: E402
from anomalens.cli import app  # noqa: E402
from anomalens.data import as_dataset  # noqa: E402
from anomalens.deploy.export import ExportError, OnnxModel, export_onnx, side_path  # noqa: E402
from conftest import tiny_patchcore  # noqa: E402

runner = CliRunner()
# float32 GEMM distances (onnxruntime) vs faiss / torch: agreement to ~1e-6 relative was measured; 1e-4 leaves room
RTOL = 1e-4


def transformed(model, data):
    return torch.stack([s.image for s in as_dataset(data, model.transform)])


def assert_parity(model, onnx_path, images):
    ref = model.predict(images)
    x = transformed(model, images)
    onnx = OnnxModel(onnx_path)
    for batch in (x, x[:1]):  # exported with N = 2: other batch sizes must run too
        s, m = onnx.run(batch)
        n = len(batch)
        assert s.shape == (n,) and m.shape == (n, *x.shape[-2:]) and s.dtype == np.float32
        scale_s, scale_m = np.abs(ref.image_scores).max(), np.abs(ref.anomaly_maps).max()
        np.testing.assert_allclose(s, ref.image_scores[:n], rtol=0, atol=RTOL * scale_s)
        np.testing.assert_allclose(m, ref.anomaly_maps[:n], rtol=0, atol=RTOL * scale_m)
    return ref


@pytest.fixture(scope="module")
def train_dir(synthetic_root):
    return str(synthetic_root / "weave" / "train" / "good")


def test_gather_aggregator_equals_patch_aggregator():
    """The export form of the locally aware aggregation (no duplicate-index scatter) equals the estimator's."""
    from anomalens.deploy.export import GatherAggregator
    from anomalens.ops.pooling import PatchAggregator

    for channels, sizes, dims in [((40, 112), (16, 8), (1024, 1024)), ((24, 40, 112), (16, 8, 4), (512, 384))]:
        agg = PatchAggregator(channels, 3, *dims)
        feats = [torch.randn(2, c, n, n) for c, n in zip(channels, sizes)]
        torch.testing.assert_close(GatherAggregator(agg)(feats), agg(feats), rtol=1e-5, atol=1e-6)


# EfficientNet-Lite0's taps (40 / 112 channels) pool up to pretrain_dim: duplicate-index adds that ONNX scatter loses
@pytest.mark.parametrize("settings", [{}, {"image_score": "reweighted", "num_neighbors": 3, "distance": "squared_l2"},
                                      {"backbone": "tf_efficientnet_lite0"}])
def test_patchcore_onnx_equals_torch(tmp_path, synthetic_root, train_dir, settings):
    model = tiny_patchcore(**settings).fit(train_dir)
    model.threshold_ = 1.5
    path = export_onnx(model, tmp_path / "pc.onnx")
    assert_parity(model, path, str(synthetic_root / "weave" / "test"))
    side = json.loads(side_path(path).read_text())
    assert side["transform"] == model.transform.to_dict() and side["threshold"] == 1.5
    assert side["input_size"] == [64, 64] and side["random_init"] is True and side["settings"]["backbone"] == model.backbone
    import hashlib

    assert side["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def _exported_with_inputs(tmp_path, synthetic_root, train_dir):
    """(model, exported .onnx path, test images) with the transformed images saved as tmp_path / "x.npy"."""
    model = tiny_patchcore().fit(train_dir)
    path = export_onnx(model, tmp_path / "pc.onnx")
    images = str(synthetic_root / "weave" / "test" / "hole")
    np.save(tmp_path / "x.npy", transformed(model, images).numpy())
    return model, path, images


def test_onnx_runs_in_onnxruntime_alone(tmp_path, synthetic_root, train_dir):
    """A fresh interpreter with only onnxruntime + numpy scores like the torch model; torch is never imported."""
    model, path, images = _exported_with_inputs(tmp_path, synthetic_root, train_dir)
    code = (
        "import sys, json, numpy as np, onnxruntime as ort\n"
        f"s = ort.InferenceSession({str(path)!r}, providers=['CPUExecutionProvider'])\n"
        f"score, amap = s.run(['image_score', 'anomaly_map'], {{'image': np.load({str(tmp_path / 'x.npy')!r})}})\n"
        f"np.save({str(tmp_path / 'score.npy')!r}, score)\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False"]
    ref = model.predict(images).image_scores
    np.testing.assert_allclose(np.load(tmp_path / "score.npy"), ref, rtol=0, atol=RTOL * np.abs(ref).max())


def test_onnx_model_class_imports_and_runs_without_torch(tmp_path, synthetic_root, train_dir):
    """Issue 19 item 11: `anomalens.deploy.export.OnnxModel` in an interpreter where torch cannot even be imported."""
    from pathlib import Path

    model, path, images = _exported_with_inputs(tmp_path, synthetic_root, train_dir)
    code = (
        "import sys, numpy as np\n"
        "class NoTorch:\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name == 'torch' or name.startswith('torch.'):\n"
        "            raise ImportError('torch is not installed here')\n"
        "sys.meta_path.insert(0, NoTorch())\n"
        "from anomalens.deploy.export import OnnxModel\n"
        f"m = OnnxModel({str(path)!r})\n"
        f"score, amap = m.run(np.load({str(tmp_path / 'x.npy')!r}))\n"
        f"np.save({str(tmp_path / 'score.npy')!r}, score)\n"
        "print(m.input_size, m.threshold, 'torch' in sys.modules)\n"
    )
    src = str(Path(__file__).resolve().parents[1] / "src")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**__import__("os").environ,
                                                                                        "PYTHONPATH": src})
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[-1] == "False"
    ref = model.predict(images).image_scores
    np.testing.assert_allclose(np.load(tmp_path / "score.npy"), ref, rtol=0, atol=RTOL * np.abs(ref).max())


def test_ensemble_needs_calibration_then_matches(tmp_path, synthetic_root, train_dir):
    model = tiny_patchcore(backbone=["resnet18", "resnet18"], layers=[["layer2", "layer3"], ["layer1", "layer2"]]).fit(train_dir)
    with pytest.raises(ExportError, match="calibrate"):
        export_onnx(model, tmp_path / "e.onnx")
    model.calibrate(str(synthetic_root / "weave" / "test" / "good"))
    path = export_onnx(model, tmp_path / "e.onnx")
    assert_parity(model, path, str(synthetic_root / "weave" / "test"))


def test_export_refuses_overwrite_and_variable_size(tmp_path, train_dir):
    from anomalens.deploy.export import input_size

    model = tiny_patchcore(resize=64, crop=None).fit(train_dir)  # no crop: each image keeps its own frame size
    assert input_size(model) == tuple(model.frame_size_) == tuple(model.transform.resized_size(
        anomalens.data.as_dataset(train_dir).original_size(0)))  # default: the training frame
    model.frame_size_ = None  # e.g. a zero-shot model never fitted on images: the size must be given
    with pytest.raises(ExportError, match="input_size"):
        export_onnx(model, tmp_path / "v.onnx")
    (tmp_path / "mine.onnx").write_text("a user's file")
    with pytest.raises(ExportError, match="exists"):
        export_onnx(model, tmp_path / "mine.onnx", (64, 64))
    assert (tmp_path / "mine.onnx").read_text() == "a user's file"
    with pytest.raises(ExportError, match="ivfpq"):
        m = tiny_patchcore(knn="ivfpq").fit(train_dir)
        export_onnx(m, tmp_path / "i.onnx")


def test_cli_export_checks_parity(tmp_path, train_dir):
    model_dir = tiny_patchcore().fit(train_dir).save(tmp_path / "model")
    out = tmp_path / "m.onnx"
    r = runner.invoke(app, ["export", str(model_dir), "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert out.is_file() and side_path(out).is_file() and "parity" in r.output
    assert json.loads(side_path(out).read_text())["provenance"]["source"] == str(model_dir.resolve())
    r = runner.invoke(app, ["export", str(model_dir), "-o", str(out)])
    assert r.exit_code == 2 and "--force" in r.output
    assert runner.invoke(app, ["export", str(model_dir), "-o", str(out), "--force", "--no-check"]).exit_code == 0


@pytest.mark.slow
def test_winclip_plus_onnx_equals_torch_on_non_square_input(tmp_path, synthetic_root, train_dir):
    """Text prototypes and k-shot memories baked in; a 96 x 128 input is tiled inside the graph."""
    model = anomalens.create("winclip", class_name="fabric", backbone="ViT-S-16", weights=None, image_size=96, k_shot=1,
                             scales=(2,), templates="paper22", device="cpu").fit(train_dir)
    path = export_onnx(model, tmp_path / "wc.onnx", (96, 128))
    x = torch.rand(3, 3, 96, 128) * 2 - 1
    s_ref, m_ref = model._score_batch(x)  # the frame through the model's tiler, as predict
    s, m = OnnxModel(path).run(x)
    np.testing.assert_allclose(s, s_ref, rtol=0, atol=RTOL * np.abs(s_ref).max())
    np.testing.assert_allclose(m, m_ref, rtol=0, atol=RTOL * np.abs(m_ref).max())


@pytest.mark.integration
def test_patchcore_real_weights_real_images_parity(assets, tmp_path):
    """EfficientNet-Lite0 ImageNet weights on MVTec hazelnut: onnxruntime matches torch; the ranking (AUROC) is unchanged."""
    weights = assets / "weights" / "tf_efficientnet_lite0.imagenet.safetensors"
    root = assets / "mvtec-reduced" / "hazelnut_reduced"
    if not weights.is_file() or not root.is_dir():
        pytest.skip("real weights or mvtec-reduced not present")
    model = anomalens.create("patchcore", backbone="tf_efficientnet_lite0", weights=str(weights), coreset_ratio=0.1,
                             resize=256, crop=None, device="cpu").fit(str(root / "train" / "good"))
    assert model.random_init is False
    path = export_onnx(model, tmp_path / "real.onnx", (256, 256))
    ds = anomalens.data.MVTecAD(assets / "mvtec-reduced", "hazelnut_reduced", "test")
    ref = assert_parity(model, path, ds)
    from sklearn.metrics import roc_auc_score

    s, _ = OnnxModel(path).run(transformed(model, ds))
    assert roc_auc_score(ds.labels, s) == roc_auc_score(ds.labels, ref.image_scores)


@pytest.mark.parametrize("variant", ["sdp", "sdp+"])
def test_clipad_onnx_equals_torch(tmp_path, variant):
    """The staged dual-path pass (surgery hooks traced beside the stock tower), T and the SDP+ adapters baked in;
    the exported file comes from a saved model folder, as the CLI does it."""
    from test_clipad import TINY, _random_adapters

    from anomalens.models.clipad import save_adapters

    kw = {}
    if variant == "sdp+":
        probe = anomalens.create("clipad", class_name="bottle", **TINY)
        kw["adapter"] = str(save_adapters(tmp_path / "ad", _random_adapters(probe, 3), {}))
    model = anomalens.create("clipad", class_name="bottle", variant=variant, **TINY, **kw).fit()
    model = anomalens.load(model.save(tmp_path / "model"), device="cpu")
    path = export_onnx(model, tmp_path / "clipad.onnx")
    g = torch.Generator().manual_seed(2)
    x = torch.rand(3, 3, 96, 96, generator=g) * 4 - 2
    s_ref, m_ref, _ = model._predict_batch(x)
    onnx = OnnxModel(path)
    for batch in (x, x[:1]):
        s, m = onnx.run(batch)
        n = len(batch)
        assert s.shape == (n,) and m.shape == (n, 96, 96)
        np.testing.assert_allclose(s, s_ref[:n], rtol=0, atol=RTOL * np.abs(s_ref).max())
        np.testing.assert_allclose(m, m_ref[:n], rtol=0, atol=RTOL * np.abs(m_ref).max())
    from anomalens.deploy.export import parity

    assert parity(model, path, x)["map_max_rel"] < RTOL  # the route `anomalens export` checks with
    side = json.loads(side_path(path).read_text())
    assert side["model"] == "clipad" and side["settings"]["variant"] == variant and side["random_init"] is True
