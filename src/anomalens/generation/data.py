"""Training data for the generator: the first third of a defect type's images + masks (spec §1, §7) and the
training augmentation of spec §3.5."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..data.image_io import is_image_file, load_image, load_mask
from ..errors import DataError


def split_ids(n: int, mode: str = "code") -> tuple[list[int], list[int]]:
    """(train, test) indices of n sorted anomaly images.

    code: train 0..n//3 inclusive (official generation training; index n//3 is also a test image);
    strict: train 0..n//3-1, no overlap. Test is always n//3..n-1 (the official test loaders).
    """
    if mode not in ("code", "strict"):
        raise ValueError(f"split mode must be 'code' or 'strict', got {mode!r}")
    third = n // 3
    last = min(third, n - 1) if mode == "code" else third - 1
    train = list(range(0, last + 1))
    if not train and n > 0:
        train = [0]  # fewer than 3 images: still train on the first one
    return train, list(range(third, n))


def _sort_key(p: Path):
    stem = p.stem
    return (0, int(stem), stem) if stem.isdigit() else (1, 0, stem)


@dataclass
class DefectPairs:
    """Sorted image/mask paths of one defect type of an MVTec-layout category."""

    images: list[Path]
    masks: list[Path]
    key: str

    def subset(self, ids: list[int]) -> "DefectPairs":
        """Pairs at `ids`."""
        return DefectPairs([self.images[i] for i in ids], [self.masks[i] for i in ids], self.key)


def defect_pairs(root, category: str, defect: str) -> DefectPairs:
    """All (image, mask) pairs of ROOT/category/test/defect, sorted by numeric id; errors name the missing path."""
    root = Path(root)
    cat = root / category
    for p, what in ((root, "dataset root"), (cat, f"category {category!r}")):
        if not p.is_dir():
            raise DataError(f"{what} not found: {p}")
    img_dir, gt_dir = cat / "test" / defect, cat / "ground_truth" / defect
    if not img_dir.is_dir():
        raise DataError(f"defect folder not found: {img_dir}")
    images = sorted((p for p in img_dir.iterdir() if p.is_file() and is_image_file(p) and not p.name.startswith(".")),
                    key=_sort_key)
    if not images:
        raise DataError(f"no images in defect folder {img_dir}")
    if not gt_dir.is_dir():
        raise DataError(f"ground-truth folder not found: {gt_dir}")
    masks = []
    for p in images:
        cands = [gt_dir / f"{p.stem}_mask{ext}" for ext in (".png", p.suffix)] + [gt_dir / f"{p.stem}{p.suffix}"]
        m = next((c for c in cands if c.is_file()), None)
        if m is None:
            raise DataError(f"no mask for {p}: expected {cands[0]}")
        masks.append(m)
    return DefectPairs(images, masks, f"{category}+{defect}")


def training_pairs(root, category: str, defect: str, mode: str = "code") -> DefectPairs:
    """The generator's training share: the lowest-id third of the defect's pairs (spec §1)."""
    pairs = defect_pairs(root, category, defect)
    return pairs.subset(split_ids(len(pairs.images), mode)[0])


def load_pairs(pairs: DefectPairs, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N,3,size,size) in [-1,1] (bicubic) and masks (N,1,size,size) in {0,1} (bicubic, >= 0.5).

    A mask whose size differs from its image is an error naming both files.
    """
    xs, ms = [], []
    from PIL import Image

    for ip, mp in zip(pairs.images, pairs.masks):
        img = load_image(ip)
        mask = load_mask(mp)
        if mask.shape != (img.height, img.width):
            raise DataError(f"mask {mp} is {mask.shape[1]}x{mask.shape[0]} but image {ip} is {img.width}x{img.height}")
        img = img.resize((size, size), resample=Image.BICUBIC)
        mimg = Image.fromarray(mask.astype(np.float32) * 255.0, mode="F").resize((size, size), resample=Image.BICUBIC)
        xs.append(torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 127.5 - 1)
        ms.append(torch.from_numpy((np.asarray(mimg) / 255.0 >= 0.5).astype(np.float32))[None])
    return torch.stack(xs), torch.stack(ms)


def augment_batch(images: torch.Tensor, masks: torch.Tensor, size: int, generator: torch.Generator,
                  prob: float = 0.5, max_rotation: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    """Spec §3.5 on a batch loaded at 2x size: with prob, per-image flips + rotation in [0, max_rotation] degrees (fill 0)
    and a random crop that keeps the mask's bounding box (per sample — our deviation), then resize to `size`."""
    import torchvision.transforms.functional as TF

    def rnd() -> float:
        return float(torch.rand((), generator=generator))

    def randint(lo: int, hi: int) -> int:  # inclusive
        return int(torch.randint(lo, hi + 1, (), generator=generator))

    if rnd() >= prob:
        return _resize(images, size, "bicubic"), _resize(masks, size, "bilinear")
    out_x, out_m = [], []
    for x, m in zip(images, masks):
        if rnd() < 0.5:
            x, m = x.flip(-2), m.flip(-2)
        if rnd() < 0.5:
            x, m = x.flip(-1), m.flip(-1)
        angle = randint(0, max_rotation)
        x = TF.rotate(x, angle, fill=0.0)
        m = TF.rotate(m, angle, fill=0.0)
        H, W = m.shape[-2:]
        rows = torch.nonzero(m[0] > 0.5)
        if len(rows):
            r1, c1 = rows.min(0).values.tolist()
            r2, c2 = rows.max(0).values.tolist()
        else:
            r1, c1, r2, c2 = 0, 0, H - 1, W - 1
        top, bottom = randint(0, r1), randint(r2, H - 1)
        left, right = randint(0, c1), randint(c2, W - 1)
        x = x[:, top:bottom + 1, left:right + 1]
        m = m[:, top:bottom + 1, left:right + 1]
        out_x.append(_resize(x[None], size, "bilinear")[0])
        out_m.append(_resize(m[None], size, "bilinear")[0])
    return torch.stack(out_x), torch.stack(out_m)


def _resize(x: torch.Tensor, size: int, mode: str) -> torch.Tensor:
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    y = F.interpolate(x, size=(size, size), mode=mode, align_corners=False, antialias=x.shape[-1] > size)
    return y.clamp(-1, 1) if mode == "bicubic" else y


def list_image_files(specs, what: str = "images") -> list[Path]:
    """Files, folders (their images, sorted) or glob patterns -> image paths; none found is an error naming the input."""
    import glob

    out: list[Path] = []
    for s in specs:
        p = Path(s)
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.is_file() and is_image_file(q) and not q.name.startswith("."))
            if not found:
                raise DataError(f"no images in folder {p}")
            out += found
        elif p.is_file():
            out.append(p)
        else:
            hits = sorted(Path(h) for h in glob.glob(str(s), recursive=True) if is_image_file(h))
            if not hits:
                raise DataError(f"{what} not found: {s}")
            out += hits
    if not out:
        raise DataError(f"no {what} given")
    return out


def load_mask_tensor(path, size: Optional[int] = None) -> torch.Tensor:
    """A mask file -> (1,H,W) float {0,1}, optionally nearest-resized to size x size."""
    m = torch.from_numpy(load_mask(path).astype(np.float32))[None]
    if size is not None and m.shape[-1] != size:
        m = (F.interpolate(m[None], size=(size, size), mode="nearest")[0] > 0.5).float()
    return m
