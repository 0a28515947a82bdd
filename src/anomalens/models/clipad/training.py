"""SDP+ training (spec §5): frozen CLIP tokens extracted once into an on-disk cache (memory-mapped), then the 4 stage
linears trained with focal + dice, Adam 1e-4, 5 epochs, batch 8, unshuffled order (as the official code), seeded;
resumable per-epoch atomic checkpoints; the last epoch and the best-on-validation epoch both saved and reported.

Output directory:
    last/ best/                  adapter directories (adapter.safetensors + adapter.json); `adapter=OUT` loads last/
    checkpoints/epoch_NNN/       adapters + Adam state + history (resume point)
    cache/<key>/                 tokens.npy (N, stages, P, D) float16, masks.npy, sdp.npy, p_abn.npy, meta.json
    training.json                per-epoch loss and validation metrics, which epoch is last / best
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from ...errors import DataError
from ...io import atomic_path, write_json
from ...progress import track
from .adapters import save_adapters
from .torch_model import StageAdapters, abnormal_probability, dual_path_forward, sdp_patch_scores, sdp_plus_loss

PAPER_SELECTION = ("the paper reports the epoch with the highest image AUROC on the target dataset's test set "
                   "(test-set selection); 'last' (epoch 5) is the selection-free number")


def _datasets(root, dataset: str, categories: Optional[Sequence[str]], transform) -> list:
    from ...data import MVTecAD, VisA

    if dataset not in ("mvtec", "visa"):
        raise DataError(f"dataset must be mvtec or visa, got {dataset!r}")
    cls = MVTecAD if dataset == "mvtec" else VisA
    cats = list(categories or cls.categories(root))
    return [cls(root, c, "test", transform) for c in cats]


def _model_for(dataset: str, clip_settings: dict, class_name: str = "object"):
    from .estimator import CLIPAD

    return CLIPAD(class_name=class_name, variant="sdp", dataset=dataset, **clip_settings)


def extract_features(root, dataset: str, cache_root: Path, clip_settings: dict, categories: Optional[Sequence[str]] = None,
                     batch_size: int = 8, description: str = "clipad: caching CLIP tokens") -> Path:
    """Run the frozen dual-path CLIP once over every test image of `dataset` and store O_j (float16), masks, the
    SDP patch scores and p_abn (with that dataset's text features) in memory-mapped .npy files; resumable."""
    from numpy.lib.format import open_memmap

    base = _model_for(dataset, clip_settings)
    dss = _datasets(root, dataset, categories, base.transform)
    paths = [p for ds in dss for p in ds.paths]
    key_parts = {"dataset": dataset, "root": str(Path(root).resolve()), "paths": hashlib.sha256("\n".join(paths).encode()).hexdigest(),
                 "settings": {k: clip_settings.get(k) for k in sorted(clip_settings) if k not in ("device", "batch_size")}}
    key = hashlib.sha256(json.dumps(key_parts, sort_keys=True, default=str).encode()).hexdigest()[:16]
    folder = cache_root / f"{dataset}-{key}"
    meta_path = folder / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else None
    if meta is not None and meta.get("complete"):
        return folder
    for ds in dss:
        for r in ds.records:
            if r.label == 1 and r.mask_path is None:
                raise DataError(f"SDP+ training needs a mask for every anomalous image; {r.path} has none")
    model = base.setup()
    S, stages, D = int(model.image_size), int(model.stages), model.width
    P = (S // _patch(model)) ** 2
    N = len(paths)
    fresh = meta is None
    if fresh:
        folder.mkdir(parents=True, exist_ok=True)
        meta = {"key": key_parts, "n": N, "done": 0, "complete": False, "stages": stages, "patches": P, "width": D,
                "image_size": S, "categories": [ds.category for ds in dss],
                "category_of": [i for i, ds in enumerate(dss) for _ in range(len(ds))],
                "labels": [int(r.label) for ds in dss for r in ds.records], "paths": paths}
    mode = "w+" if fresh else "r+"
    tokens = open_memmap(folder / "tokens.npy", mode=mode, dtype=np.float16, shape=(N, stages, P + 1, D))
    masks = open_memmap(folder / "masks.npy", mode=mode, dtype=np.uint8, shape=(N, S, S))
    sdp = open_memmap(folder / "sdp.npy", mode=mode, dtype=np.float32, shape=(N, P))
    pab = open_memmap(folder / "p_abn.npy", mode=mode, dtype=np.float32, shape=(N,))
    texts = {}
    for ds in dss:
        m = _model_for(dataset, clip_settings, ds.category)
        m._clip, m._tokenizer = model._clip, model._tokenizer
        texts[ds.category] = m.text_features().cpu()
    from safetensors.torch import save_file

    with atomic_path(folder / "text.safetensors") as tmp:
        save_file({c: t.contiguous() for c, t in texts.items()}, str(tmp))
    write_json(meta_path, meta)
    start = int(meta["done"])
    offset = 0
    batches = []
    for ds in dss:
        for s in range(0, len(ds), batch_size):
            batches.append((ds, s, offset + s))
        offset += len(ds)
    todo = [b for b in batches if b[2] >= start]
    for ds, s, g in track(todo, description, total=len(todo)):
        sub = ds.subset(range(s, min(s + batch_size, len(ds))))
        items = [sub[i] for i in range(len(sub))]
        images = torch.stack([it.image for it in items]).to(model.device_)
        T = texts[ds.category].to(model.device_)
        with torch.inference_mode():
            out = dual_path_forward(model._model(), images, stages, model.ori_tap)
            sdp[g : g + len(items)] = sdp_patch_scores(out.surgery, T).float().cpu().numpy()
            pab[g : g + len(items)] = abnormal_probability(out.image_embed, T).float().cpu().numpy()
            tokens[g : g + len(items)] = torch.stack(out.original, dim=1).to(torch.float16).cpu().numpy()
        masks[g : g + len(items)] = np.stack([it.mask.numpy().astype(np.uint8) for it in items])
        for arr in (tokens, masks, sdp, pab):
            arr.flush()
        meta["done"] = g + len(items)
        write_json(meta_path, meta)
    meta["complete"] = True
    write_json(meta_path, meta)
    return folder


def _patch(model) -> int:
    ps = model._model().visual.patch_size
    return ps[0] if isinstance(ps, (tuple, list)) else int(ps)


class FeatureCache:
    """A memory-mapped feature cache written by `extract_features` (read-only)."""

    def __init__(self, folder: Path):
        from safetensors.torch import load_file

        self.folder = Path(folder)
        self.meta = json.loads((self.folder / "meta.json").read_text())
        self.tokens = np.load(self.folder / "tokens.npy", mmap_mode="r")
        self.masks = np.load(self.folder / "masks.npy", mmap_mode="r")
        self.sdp = np.load(self.folder / "sdp.npy", mmap_mode="r")
        self.p_abn = np.load(self.folder / "p_abn.npy", mmap_mode="r")
        texts = load_file(str(self.folder / "text.safetensors"))
        self.text = torch.stack([texts[c] for c in self.meta["categories"]])  # (K, C, 2)
        self.category_of = np.asarray(self.meta["category_of"], dtype=np.int64)
        self.labels = np.asarray(self.meta["labels"], dtype=np.int64)

    def __len__(self) -> int:
        return int(self.meta["n"])

    def batch(self, idx: np.ndarray, device) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """(O_j list of (B, N, D) float32, T (B, C, 2), masks (B, S, S) float32) for the rows `idx`."""
        tok = torch.from_numpy(np.ascontiguousarray(self.tokens[idx])).to(device, torch.float32)
        original = [tok[:, j] for j in range(tok.shape[1])]
        T = self.text[torch.from_numpy(self.category_of[idx])].to(device)
        masks = torch.from_numpy(np.ascontiguousarray(self.masks[idx])).to(device, torch.float32)
        return original, T, masks


def validate(adapters: StageAdapters, cache: FeatureCache, rows: np.ndarray, sigma: float, device, batch_size: int = 8) -> dict:
    """Mean over categories of image AUROC (per-category min–max of p_abn and map_max, summed, as the paper) and
    pixel AUROC of the SDP+ map, on cached features."""
    from ...metrics import image as image_metrics
    from ...metrics.curves import auroc
    from ...metrics.pixel import pixel_groups
    from ...ops import gaussian_blur
    from .torch_model import sdp_map

    S = int(cache.meta["image_size"])
    map_max = np.zeros(len(rows))
    maps = np.zeros((len(rows), S, S), dtype=np.float32)
    with torch.inference_mode():
        for s in range(0, len(rows), batch_size):
            idx = rows[s : s + batch_size]
            original, T, _ = cache.batch(idx, device)
            m = sdp_map(torch.from_numpy(np.ascontiguousarray(cache.sdp[idx])).to(device), S)
            m = m + sum(adapter_map_one(adapters, original, T, S))
            m = gaussian_blur(m, sigma)
            maps[s : s + len(idx)] = m.cpu().numpy()
            map_max[s : s + len(idx)] = m.flatten(1).amax(1).cpu().numpy()
    per_cat = {}
    cats = cache.category_of[rows]
    for k in np.unique(cats):
        sel = cats == k
        labels = cache.labels[rows][sel]
        if labels.min() == labels.max():
            continue
        score = _minmax(np.asarray(cache.p_abn)[rows][sel]) + _minmax(map_max[sel])
        masks = np.asarray(cache.masks[rows[sel]]).astype(bool)
        per_cat[cache.meta["categories"][k]] = {"image_auroc": image_metrics.auroc(score, labels),
                                                "pixel_auroc": auroc(pixel_groups(maps[sel], masks))}
    mean = {m: float(np.mean([v[m] for v in per_cat.values()])) if per_cat else float("nan") for m in ("image_auroc", "pixel_auroc")}
    return {"mean": mean, "per_category": per_cat}


def adapter_map_one(adapters: StageAdapters, original, T, S):
    """Per-stage Q_j maps (helper for validation with per-image text)."""
    from .torch_model import adapter_probabilities

    return [adapter_probabilities(X, T, S)[:, 1] for X in adapters(original)]


def _minmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    r = x.max() - x.min()
    return (x - x.min()) / r if r > 0 else np.zeros_like(x)


def _save_checkpoint(path: Path, adapters: StageAdapters, optimizer: torch.optim.Optimizer, state: dict, settings: dict) -> None:
    from safetensors.torch import save_file

    opt = optimizer.state_dict()
    tensors = {}
    for pid, st in opt["state"].items():
        for name, v in st.items():
            tensors[f"{pid}.{name}"] = torch.as_tensor(v).detach().cpu().contiguous()
    with atomic_path(path) as tmp:
        tmp.mkdir()
        save_adapters(tmp / "adapter", adapters, settings)
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        (tmp / "state.json").write_text(json.dumps(state | {"param_groups": opt["param_groups"]}, indent=2) + "\n")


def _load_checkpoint(path: Path, adapters: StageAdapters, optimizer: torch.optim.Optimizer) -> dict:
    from safetensors.torch import load_file

    from .adapters import read_adapter_file

    sd, _ = read_adapter_file(path / "adapter")
    adapters.load_state_dict(sd)
    state = json.loads((path / "state.json").read_text())
    flat = load_file(str(path / "optimizer.safetensors"))
    opt_state: dict = {}
    for k, v in flat.items():
        pid, name = k.split(".", 1)
        opt_state.setdefault(int(pid), {})[name] = v
    optimizer.load_state_dict({"state": opt_state, "param_groups": state.pop("param_groups")})
    return state


def train_adapters(root, out_dir, dataset: str = "visa", *, categories: Optional[Sequence[str]] = None,
                   val_root=None, val_dataset: Optional[str] = None, val_categories: Optional[Sequence[str]] = None,
                   val_fraction: float = 0.1, epochs: int = 5, batch_size: int = 8, lr: float = 1e-4, seed: int = 42,
                   device: str = "auto", resume: bool = False, cache_dir=None, keep_cache: bool = True,
                   **clip_settings) -> dict:
    """Train SDP+ stage linears on the test split of `dataset` at `root` (cross-dataset protocol: train on VisA to
    evaluate MVTec AD and vice versa). Validation: the target `val_root`/`val_dataset` test split when given (the
    paper's protocol, test-set selection), else a seeded `val_fraction` holdout of the training images.
    `clip_settings`: CLIPAD settings (backbone, weights, image_size, stages, ori_tap, rvs, rvs_dtype, ...).
    Returns the report also written to OUT/training.json."""
    from ...device import resolve_device

    out = Path(out_dir)
    dev = resolve_device(device)
    clip_settings = dict(clip_settings) | {"device": str(dev)}
    cache_root = Path(cache_dir) if cache_dir is not None else out / "cache"
    train_cache = FeatureCache(extract_features(root, dataset, cache_root, clip_settings, categories, batch_size,
                                                f"clipad: caching {dataset} tokens"))
    n = len(train_cache)
    train_rows = np.arange(n)
    val_rows, val_cache, val_name = None, None, None
    if val_root is not None:
        vd = val_dataset or ("mvtec" if dataset == "visa" else "visa")
        val_cache = FeatureCache(extract_features(val_root, vd, cache_root, clip_settings, val_categories, batch_size,
                                                  f"clipad: caching {vd} tokens (validation)"))
        val_rows, val_name = np.arange(len(val_cache)), f"{vd} test split ({val_root})"
        val_sigma = 2.0 if vd == "visa" else 8.0
    elif val_fraction > 0:
        perm = np.random.default_rng(seed).permutation(n)
        n_val = int(round(n * val_fraction))
        if 0 < n_val < n:
            val_rows, train_rows = np.sort(perm[:n_val]), np.sort(perm[n_val:])
            val_cache, val_name = train_cache, f"{n_val}-image holdout of the {dataset} training images (seed {seed})"
        val_sigma = 2.0 if dataset == "visa" else 8.0
    meta = train_cache.meta
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        adapters = StageAdapters(meta["width"], int(train_cache.text.shape[1]), meta["stages"]).to(dev)
    optimizer = torch.optim.Adam(adapters.parameters(), lr=lr)
    settings = {"backbone": clip_settings.get("backbone", "ViT-B-16-plus-240"), "weights": clip_settings.get("weights", "laion400m_e31"),
                "ori_tap": clip_settings.get("ori_tap", "official"), "image_size": meta["image_size"], "trained_on": dataset,
                "train_root": str(root), "lr": lr, "batch_size": batch_size, "seed": seed}
    history: list[dict] = []
    start = 0
    ckpts = out / "checkpoints"
    if resume and ckpts.is_dir():
        done = sorted(p for p in ckpts.iterdir() if p.name.startswith("epoch_") and (p / "state.json").is_file())
        if done:
            state = _load_checkpoint(done[-1], adapters, optimizer)
            history, start = state["history"], int(state["epoch"])
    elif ckpts.is_dir() and not resume:
        shutil.rmtree(ckpts)
    for epoch in range(start, epochs):
        adapters.train()
        losses = []
        steps = range(0, len(train_rows), batch_size)
        for s in track(steps, f"clipad: epoch {epoch + 1}/{epochs}", total=len(steps)):
            original, T, masks = train_cache.batch(train_rows[s : s + batch_size], dev)
            loss = sdp_plus_loss(adapters, original, T, masks)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
        adapters.eval()
        rec = {"epoch": epoch + 1, "loss": float(np.mean(losses))}
        if val_rows is not None:
            rec["validation"] = validate(adapters, val_cache, val_rows, val_sigma, dev, batch_size)
        history.append(rec)
        _save_checkpoint(ckpts / f"epoch_{epoch + 1:03d}", adapters, optimizer, {"epoch": epoch + 1, "history": history},
                         settings | {"epoch": epoch + 1})
    final = ckpts / f"epoch_{epochs:03d}"
    from .adapters import read_adapter_file

    def _copy(src_epoch: int, name: str) -> Path:
        sd, cfg = read_adapter_file(ckpts / f"epoch_{src_epoch:03d}" / "adapter")
        tmp = StageAdapters(meta["width"], int(train_cache.text.shape[1]), meta["stages"])
        tmp.load_state_dict(sd)
        return save_adapters(out / name, tmp, {k: v for k, v in cfg.items() if k not in ("format", "format_version")}
                             | {"selection": name})

    if not final.is_dir():
        raise DataError(f"no checkpoint for epoch {epochs} in {ckpts}")
    _copy(epochs, "last")
    best_epoch = None
    scored = [h for h in history if "validation" in h and not np.isnan(h["validation"]["mean"]["image_auroc"])]
    if scored:
        best_epoch = max(scored, key=lambda h: (h["validation"]["mean"]["image_auroc"], -h["epoch"]))["epoch"]
        _copy(best_epoch, "best")
    report = {"dataset": dataset, "root": str(root), "n_train": int(len(train_rows)), "epochs": epochs, "history": history,
              "last": {"epoch": epochs, "path": str(out / "last")},
              "best": ({"epoch": best_epoch, "path": str(out / "best"), "selected_by": "mean image AUROC on " + val_name}
                       if best_epoch else None),
              "validation": val_name, "paper_selection": PAPER_SELECTION, "settings": settings}
    write_json(out / "training.json", report)
    if not keep_cache:
        shutil.rmtree(cache_root, ignore_errors=True)
    return report
