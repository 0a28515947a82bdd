"""Write a generated MVTec-layout dataset: OUT/test/D/000.png + OUT/ground_truth/D/000_mask.png (binary 0/255)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from ..errors import AnomalensError, DataError
from ..io import atomic_path, write_json
from .data import list_image_files, load_mask_tensor
from .pipeline import AnomalyDiffusionPipeline


def _save_png(path: Path, arr: np.ndarray) -> None:
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(arr).save(tmp, format="PNG")


def generate_dataset(gen_dir, normal_images: Sequence, n: int, out, seed: int = 0, steps: Optional[int] = None,
                     defect: Optional[str] = None, masks: Optional[Sequence] = None, force: bool = False,
                     device="auto", batch_size: int = 4, use_aar: Optional[bool] = None,
                     progress: bool = True) -> list[Path]:
    """Generate n (image, mask) pairs on random normal images (seeded); refuses a non-empty OUT unless force."""
    if n < 1:
        raise ValueError(f"-n must be >= 1, got {n}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise AnomalensError(f"output path exists and is not a folder: {out}")
    if out.is_dir() and not force and any(p.is_file() and not p.name.startswith(".") for p in out.rglob("*")):
        raise AnomalensError(f"output folder {out} already holds files; pass --force to write into it anyway")
    normals = list_image_files(normal_images, "normal images")
    mask_files = list_image_files(masks, "masks") if masks else None
    pipe = AnomalyDiffusionPipeline.from_pretrained(gen_dir, device=device)
    key = pipe.resolve_defect(defect)
    dname = key.partition("+")[2] or key
    gen = torch.Generator().manual_seed(int(seed))
    picks = torch.randint(len(normals), (n,), generator=gen).tolist()
    written, records = [], []
    for start in range(0, n, max(1, batch_size)):
        idx = list(range(start, min(n, start + batch_size)))
        ys = [normals[picks[i]] for i in idx]
        m = None
        if mask_files is not None:
            m = torch.stack([load_mask_tensor(mask_files[i % len(mask_files)], pipe.image_size) for i in idx])
            if bool((m.flatten(1).sum(1) == 0).any()):
                bad = [str(mask_files[i % len(mask_files)]) for i in idx if m[idx.index(i)].sum() == 0]
                raise DataError(f"empty mask (no foreground pixel): {bad[0]}")
        res = pipe(ys, defect=key, masks=m, num_inference_steps=steps, generator=gen, use_aar=use_aar,
                   progress=progress)
        for j, i in enumerate(idx):
            img = (res.images[j].permute(1, 2, 0).numpy() * 255.0).round().clip(0, 255).astype(np.uint8)
            msk = (res.masks[j, 0].numpy() > 0.5).astype(np.uint8) * 255
            ip = out / "test" / dname / f"{i:03d}.png"
            mp = out / "ground_truth" / dname / f"{i:03d}_mask.png"
            _save_png(ip, img)
            _save_png(mp, msk)
            written.append(ip)
            records.append({"image": str(ip.relative_to(out)), "mask": str(mp.relative_to(out)), "normal": str(ys[j]),
                            **({"mask_source": str(mask_files[i % len(mask_files)])} if mask_files else {})})
    write_json(out / "generation.json", {"generator": str(gen_dir), "defect": key, "seed": seed, "n": n,
                                         "steps": steps or pipe.config.ddim_steps, "samples": records})
    return written
