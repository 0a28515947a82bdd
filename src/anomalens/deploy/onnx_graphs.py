"""The torch side of the ONNX export (graphs, `export_onnx`, `parity`); import it through `anomalens.deploy.export`,
whose running side (`OnnxModel`) needs no torch."""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data import resize_map
from ..detector import Detector
from ..io import atomic_path
from ..ops.smoothing import gaussian_blur
from .export import INPUTS, OPSET, OUTPUTS, SIDE_FORMAT, SIDE_VERSION, ExportError, OnnxModel, side_path  # noqa: F401


# ---------------------------------------------------------------------------------------------- PatchCore
def _segments(index: torch.Tensor, n_out: int, pad: int) -> torch.Tensor:
    """(n_out, L) positions of each output's sources in `index` (out[r] = Σ src[k] for index[k] = r); `pad` fills."""
    counts = torch.bincount(index, minlength=n_out)
    order = torch.argsort(index, stable=True)
    start = torch.cumsum(counts, 0) - counts
    slot = torch.arange(len(index)) - start[index[order]]
    table = torch.full((n_out, max(int(counts.max()), 1)), pad, dtype=torch.long)
    table[index[order], slot] = order
    return table


class GatherAggregator(nn.Module):
    """`PatchAggregator` with its index_add sums written as gathers + sums.

    ONNX scatter ops do not add duplicate indices (the TorchScript exporter even exports them silently wrong),
    so each output channel gathers its L sources (a zero channel pads short lists) and sums them: same terms, exact.
    """

    def __init__(self, agg):
        super().__init__()
        self.p, self.target_dim = agg.p, agg.target_dim
        self.shapes, rows_all = [], []
        for j, (t_idx, c_idx, w) in enumerate(agg.terms):
            rows, inv = torch.unique(t_idx, return_inverse=True)
            table = _segments(inv, len(rows), len(inv))
            self.register_buffer(f"c_idx{j}", c_idx.clone())
            self.register_buffer(f"w{j}", w.clone())
            self.register_buffer(f"gather{j}", table.flatten())
            self.shapes.append(tuple(table.shape))
            rows_all.append(rows)
        rows_all = torch.cat(rows_all)  # channel of the concatenated per-layer parts -> its target channel
        table = _segments(rows_all, self.target_dim, len(rows_all))
        self.register_buffer("final", table.flatten())
        self.final_shape = tuple(table.shape)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        ref = tuple(feats[0].shape[-2:])
        parts = []
        for j, f in enumerate(feats):
            c_idx, w, gather = getattr(self, f"c_idx{j}"), getattr(self, f"w{j}"), getattr(self, f"gather{j}")
            y = F.conv2d(f.index_select(1, c_idx), w, padding=self.p // 2, groups=int(c_idx.shape[0]))
            y = F.pad(y, (0, 0, 0, 0, 0, 1))  # + one zero channel (the padding source)
            part = y.index_select(1, gather).reshape(-1, *self.shapes[j], *y.shape[-2:]).sum(2)  # -1: N stays dynamic
            if tuple(part.shape[-2:]) != ref:
                part = F.interpolate(part, size=ref, mode="bilinear", align_corners=False)
            parts.append(part)
        cat = F.pad(torch.cat(parts, 1), (0, 0, 0, 0, 0, 1))
        return cat.index_select(1, self.final).reshape(-1, *self.final_shape, *ref).sum(2)


class ExportFeatures(nn.Module):
    """`PatchFeatures` for export: the same taps, the aggregation as `GatherAggregator` when it is the official one."""

    def __init__(self, features: nn.Module):
        super().__init__()
        from ..ops.pooling import PatchAggregator

        self.extractor = features.extractor
        agg = features.aggregate
        self.aggregate = GatherAggregator(agg) if isinstance(agg, PatchAggregator) else agg

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.aggregate(list(self.extractor(images).values()))


class PatchCoreGraph(nn.Module):
    """PatchCore scoring as one traceable module (single member or a calibrated ensemble)."""

    def __init__(self, model: Detector, size: tuple[int, int]):
        super().__init__()
        if model.knn == "ivfpq":
            raise ExportError("PatchCore with knn='ivfpq' (approximate faiss index) cannot be exported; use knn='faiss' or 'torch'")
        banks = model.memory_banks_
        if len(banks) > 1 and getattr(model, "member_stats_", None) is None:
            raise ExportError("an uncalibrated PatchCore ensemble normalises over the predicted set; call calibrate() "
                              "(or fit with --holdout) before export")
        self.features = nn.ModuleList([ExportFeatures(model._features(i)) for i in range(len(banks))])
        for i, bank in enumerate(banks):
            b = bank.detach().float().cpu()
            self.register_buffer(f"bank{i}", b.clone())
            self.register_buffer(f"bank_sqnorm{i}", (b * b).sum(1))
        stats = model.member_stats_ if len(banks) > 1 else None
        self.register_buffer("stats", torch.tensor(stats, dtype=torch.float32) if stats else torch.zeros(4, 1))
        self.k, self.b = int(model.num_neighbors), int(model.reweight_b)
        self.squared, self.reweighted = model.distance == "squared_l2", model.image_score == "reweighted"
        self.sigma, self.size = float(model.sigma), tuple(int(v) for v in size)

    def _dist(self, sq: torch.Tensor) -> torch.Tensor:
        return sq if self.squared else sq.clamp(min=0).sqrt()

    def _sqdist(self, q: torch.Tensor, i: int) -> torch.Tensor:
        bank, sqn = getattr(self, f"bank{i}"), getattr(self, f"bank_sqnorm{i}")
        return ((q * q).sum(-1, keepdim=True) + sqn - 2.0 * torch.matmul(q, bank.t())).clamp(min=0.0)

    def member(self, image: torch.Tensor, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.features[i](image)
        B, d, h, w = f.shape
        q = f.flatten(2).transpose(1, 2)  # (B, hw, d) queries m_test
        sq = self._sqdist(q, i)  # (B, hw, |M|): exact, every bank row
        if self.k == 1:
            top, idx = sq.min(-1, keepdim=True)
        else:
            top, idx = torch.topk(sq, self.k, dim=-1, largest=False)
        patch = self._dist(top).mean(-1)  # Eq. 6 per patch, (B, hw)
        s_star, arg = patch.max(1)
        image_score = self._reweight(q, idx, arg, s_star, i) if self.reweighted else s_star
        maps = gaussian_blur(resize_map(patch.view(B, h, w), self.size, mode="bilinear", align_corners=False), self.sigma)
        return image_score, maps

    def _reweight(self, q, idx, arg, s_star, i: int) -> torch.Tensor:
        """Eq. 7 with N_b(m*) the b nearest bank rows of m* (m* first)."""
        bank = getattr(self, f"bank{i}")
        d = q.shape[-1]
        m_test = q.gather(1, arg.view(-1, 1, 1).expand(-1, 1, d))[:, 0]  # (B, d)
        nn_row = idx[..., 0].gather(1, arg.view(-1, 1))[:, 0]  # (B,)
        m_star = bank.index_select(0, nn_row)
        b = min(self.b, bank.shape[0])
        _, nb = torch.topk(self._sqdist(m_star[:, None], i)[:, 0], b, dim=-1, largest=False)  # (B, b)
        neigh = bank.index_select(0, nb.reshape(-1)).view(-1, b, d)
        dists = self._dist(((neigh - m_test[:, None]) ** 2).sum(-1))
        if b <= 1:
            return s_star
        return (1.0 - torch.softmax(dists, dim=1)[:, 0]) * s_star

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        outs = [self.member(image, i) for i in range(len(self.features))]
        if len(outs) == 1:
            return outs[0]
        s_lo, s_hi, m_lo, m_hi = self.stats[0], self.stats[1], self.stats[2], self.stats[3]
        score = torch.stack([(s - s_lo[i]) / (s_hi[i] - s_lo[i]).clamp(min=1e-12) for i, (s, _) in enumerate(outs)]).mean(0)
        amap = torch.stack([(m - m_lo[i]) / (m_hi[i] - m_lo[i]).clamp(min=1e-12) for i, (_, m) in enumerate(outs)]).mean(0)
        return score, amap


# ---------------------------------------------------------------------------------------------- WinCLIP
class WinCLIPGraph(nn.Module):
    """WinCLIP / WinCLIP+ scoring of (N, 3, S, S) square views at the model's input size: windows, text and memories
    baked in (the frame's tiling is `TiledGraph`'s, as for every model)."""

    def __init__(self, model: Detector, size: tuple[int, int]):
        super().__init__()
        self.model = model
        self.visual = model._model().visual  # registered, so its weights become initializers
        self.register_buffer("text", model.text_prototypes().detach().clone())
        self.size = tuple(int(v) for v in size)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.model._text = self.text  # the traced constant, not an inference-mode tensor
        s, m = self.model._score_square(image)
        return s.float(), m


# ---------------------------------------------------------------------------------------------- CLIP-AD
class _ImageTower(nn.Module):
    """The image half of an open_clip model, with the `encode_image` that `dual_path_forward` calls."""

    def __init__(self, visual: nn.Module):
        super().__init__()
        self.visual = visual

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.visual(images)


class CLIPADGraph(nn.Module):
    """CLIP-AD SDP / SDP+ scoring of (N, 3, S, S) images: the staged dual-path pass, Σ_j Sim_j (+ M_ft), σ smoothing."""

    def __init__(self, model: Detector, size: tuple[int, int]):
        super().__init__()
        self.tower = _ImageTower(model._model().visual)
        self.register_buffer("text", model.text_features().detach().float().cpu().clone())
        self.adapters = model._stage_adapters()
        self.stages, self.ori_tap, self.sigma = int(model.stages), model.ori_tap, float(model.sigma_)
        self.size = tuple(int(v) for v in size)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        from ..models.clipad.torch_model import abnormal_probability, adapter_map, dual_path_forward, sdp_map, sdp_patch_scores

        S = self.size[0]
        out = dual_path_forward(self.tower, image, self.stages, self.ori_tap)
        amap = sdp_map(sdp_patch_scores(out.surgery, self.text), S)
        if self.adapters is not None:
            amap = amap + adapter_map(self.adapters, out.original, self.text, S)
        amap = gaussian_blur(amap, self.sigma)
        return abnormal_probability(out.image_embed, self.text) + amap.flatten(1).amax(1), amap


def _anomalydino_graph(model: Detector, size: tuple[int, int]) -> nn.Module:
    """AnomalyDINO: its graph lives with the model (the official preprocessing, the ViT, the bank as an initializer)."""
    from ..models.anomalydino.graph import AnomalyDINOGraph

    return AnomalyDINOGraph(model, size)


GRAPHS = {"patchcore": PatchCoreGraph, "winclip": WinCLIPGraph, "clipad": CLIPADGraph, "anomalydino": _anomalydino_graph}


class TiledGraph(nn.Module):
    """A model's graph over the views of one fixed-size frame: the geometry's tiler unrolled into static crops, each
    scored by `inner`, maps blended with the tiler's weights, scores reduced by its rule (as `Tiler.score`)."""

    def __init__(self, inner: nn.Module, tiler, size: tuple[int, int]):
        super().__init__()
        self.inner, self.tiler, self.size = inner, tiler, tuple(int(v) for v in size)
        H, W = self.size
        self.boxes = tiler.boxes(H, W)
        for i, box in enumerate(self.boxes):
            self.register_buffer(f"weight{i}", tiler.weight(box, H, W))

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        H, W = self.size
        scores = []
        amap = image.new_zeros(image.shape[0], H, W)
        norm = image.new_zeros(H, W)
        for i, (t, l, S) in enumerate(self.boxes):
            s, m = self.inner(self.tiler.views(image, [(t, l, S)]))[:2]
            if m.shape[-1] != S or m.shape[-2] != S:
                m = F.interpolate(m[:, None], size=(S, S), mode="bilinear", align_corners=False)[:, 0]
            w = getattr(self, f"weight{i}")
            scores.append(s.float())
            amap = amap + F.pad(m * w, (l, W - l - S, t, H - t - S))
            norm = norm + F.pad(w, (l, W - l - S, t, H - t - S))
        stacked = torch.stack(scores)
        score = stacked.amax(0) if self.tiler.reduce == "max" else stacked.mean(0)
        return score, amap / norm.clamp(min=1e-12)


# ---------------------------------------------------------------------------------------------- export
def input_size(model: Detector, size: Optional[Sequence[int]] = None) -> tuple[int, int]:
    """(H, W) of the graph input: the transform's fixed output size, else `size`, else the frame size of the model's
    first training image (aspect / tiles geometries; a zero-shot model never fitted on images needs `size`)."""
    fixed = model.transform.output_size
    if size is not None:
        size = (int(size[0]), int(size[1]))
        if fixed is not None and tuple(fixed) != size:
            raise ExportError(f"{model.name}'s transform always gives {fixed[0]}x{fixed[1]} images; input size {size} would not match")
        return size
    if fixed is None and getattr(model, "frame_size_", None):
        return tuple(int(v) for v in model.frame_size_)  # the frame of the training images (aspect / tiles)
    if fixed is None:
        raise ExportError(f"{model.name}'s geometry ({model.resolved_geometry}) keeps each image's own size, so its "
                          "frame size varies; export for one frame size with input_size=(H, W) / --input-size H W")
    return tuple(int(v) for v in fixed)  # type: ignore[return-value]


def build_graph(model: Detector, size: Optional[Sequence[int]] = None) -> nn.Module:
    """The traceable module of a fitted model, in eval mode on the CPU."""
    model._check_fitted("export")
    cls = GRAPHS.get(model.name)
    if cls is None:
        raise ExportError(f"ONNX export supports {sorted(GRAPHS)}, not {model.name!r}")
    if model.device_.type != "cpu":
        raise ExportError(f"export runs on the CPU; load the model with device='cpu' (it is on {model.device_})")
    size = input_size(model, size)
    tiler = model.frame.tiler
    if tiler is None:
        return cls(model, size).eval()
    side = tiler.boxes(*size)[0][2]
    view = tiler.input_size or side
    return TiledGraph(cls(model, (view, view)), tiler, size).eval()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def export_onnx(model: Detector, path: Union[str, os.PathLike], input_size_hw: Optional[Sequence[int]] = None,
                opset: int = OPSET, source: Optional[str] = None, overwrite: bool = False) -> Path:
    """Write `path` (.onnx) and its JSON side file, atomically; returns `path`. Existing files need overwrite=True."""
    import onnx

    import anomalens

    path = Path(path)
    for p in (path, side_path(path)):
        if p.exists() and not overwrite:
            raise ExportError(f"{p} exists; pass overwrite=True (--force) to replace it")
    graph = build_graph(model, input_size_hw)
    H, W = graph.size
    example = torch.zeros(2, 3, H, W)
    axes = {"image": {0: "N"}, "image_score": {0: "N"}, "anomaly_map": {0: "N"}}
    fastpath = torch.backends.mha.get_fastpath_enabled()
    with atomic_path(path) as tmp:
        torch.backends.mha.set_fastpath_enabled(False)  # the fused attention kernel has no ONNX form
        try:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shapes are fixed but N, by design
                # strided slices (a pooling stride) are left unfolded: a note from the exporter, not a problem
                warnings.filterwarnings("ignore", message=r"Constant folding - Only steps=1", category=UserWarning)
                torch.onnx.export(graph, (example,), str(tmp), input_names=INPUTS, output_names=OUTPUTS, dynamic_axes=axes,
                                  opset_version=opset, dynamo=False, do_constant_folding=True)
        finally:
            torch.backends.mha.set_fastpath_enabled(fastpath)
        proto = onnx.load(str(tmp))
        onnx.checker.check_model(proto)
        meta = {"format": SIDE_FORMAT, "anomalens_version": anomalens.__version__, "model": model.name}
        for k, v in meta.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = f"anomalens.{k}", str(v)
        onnx.save(proto, str(tmp))
        sha = _sha256(tmp)
    side = {
        "format": SIDE_FORMAT, "format_version": SIDE_VERSION, "onnx_file": path.name, "sha256": sha,
        "inputs": {"image": {"dtype": "float32", "shape": ["N", 3, H, W], "is": "transform.image(...) outputs stacked"}},
        "outputs": {"image_score": {"dtype": "float32", "shape": ["N"]},
                    "anomaly_map": {"dtype": "float32", "shape": ["N", H, W]}},
        "input_size": [H, W], "transform": model.transform.to_dict(),
        "threshold": getattr(model, "threshold_", None), "calibration": getattr(model, "calibration_", None),
        "model": model.name, "settings": model.get_params(), "random_init": model.random_init,
        "provenance": {"anomalens_version": anomalens.__version__, "torch_version": torch.__version__,
                       "onnx_version": onnx.__version__, "opset": opset, "exporter": "torch.onnx (TorchScript, dynamo=False)",
                       "source": source},
    }
    with atomic_path(side_path(path)) as tmp:
        tmp.write_text(json.dumps(side, indent=2) + "\n")
    return path


def parity(model: Detector, onnx_path: Union[str, os.PathLike], images: torch.Tensor) -> dict:
    """Largest differences between the torch model and onnxruntime on transformed `images`, relative to the torch range."""
    with torch.inference_mode():
        s_ref, m_ref = model._postprocess(*model._score_batch(images))
    s, m = OnnxModel(onnx_path).run(images)
    scale_s = max(float(np.abs(s_ref).max()), 1e-12)
    scale_m = max(float(np.abs(m_ref).max()), 1e-12)
    return {"n_images": int(len(images)), "score_max_abs": float(np.abs(s - s_ref).max()),
            "score_max_rel": float(np.abs(s - s_ref).max() / scale_s), "map_max_abs": float(np.abs(m - m_ref).max()),
            "map_max_rel": float(np.abs(m - m_ref).max() / scale_m)}
