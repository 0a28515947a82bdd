"""Honest evaluation of a generator (spec §7): IS, IC-LPIPS and the downstream segmentation check.

IS uses torch-fidelity and IC-LPIPS uses lpips (AlexNet); both need weights that are not downloaded here: a missing
file is one clear error naming it. The IC-LPIPS clustering protocol takes any distance, so it is testable offline.
The downstream check trains a small U-Net on generated pairs + normal images and scores the real test images
(normals + the defect's images from id N//3 on) with anomalens.metrics, reporting the clean protocol (last epoch,
nothing picked on the test set) next to the paper's (best epoch chosen on the test set).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import WeightsError
from ..progress import track

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
ALEXNET_FILE = "alexnet-owt-7be5be79.pth"


def _hub_file(name: str, what: str) -> Path:
    p = Path(torch.hub.get_dir()) / "checkpoints" / name
    if not p.is_file():
        raise WeightsError(f"{what} weights not found: {p} (offline; place the file there to enable this metric)")
    return p


# ---- IC-LPIPS (Ojha et al. 2021, DFMGAN protocol) -------------------------------------------------------------------
def ic_lpips(generated: torch.Tensor, real: torch.Tensor, distance: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
             cap: int = 200, seed: int = 0) -> float:
    """Assign each generated image to its nearest real image, average the mean pairwise distance inside each cluster
    (ordered pairs, at most `cap` random members; clusters with <= 1 member count 0) over the real images.

    distance(a, b) takes two (N,3,H,W) batches in [-1,1] and returns (N,) distances.
    """
    G, R = generated.shape[0], real.shape[0]
    if G == 0 or R == 0:
        raise ValueError("IC-LPIPS needs generated and real images")
    d = torch.stack([distance(generated, real[r:r + 1].expand_as(generated)).flatten() for r in range(R)], dim=1)
    assign = d.argmin(dim=1)
    rng = np.random.default_rng(seed)
    scores = []
    for r in range(R):
        members = torch.nonzero(assign == r).flatten().tolist()
        if len(members) > cap:
            members = sorted(rng.choice(members, size=cap, replace=False).tolist())
        if len(members) <= 1:
            scores.append(0.0)
            continue
        i, j = zip(*[(a, b) for a in members for b in members if a != b])
        scores.append(float(distance(generated[list(i)], generated[list(j)]).mean()))
    return float(np.mean(scores))


def lpips_distance(device="cpu", net: str = "alex") -> Callable:
    """LPIPS distance (lpips==0.1.4, AlexNet) — needs the torchvision AlexNet weights in the torch hub cache."""
    try:
        import lpips
    except ImportError as exc:
        raise WeightsError("IC-LPIPS needs the lpips package: pip install 'anomalens[generation]'") from exc
    _hub_file(ALEXNET_FILE, "LPIPS AlexNet backbone")
    model = lpips.LPIPS(net=net, verbose=False).to(device).eval()

    @torch.no_grad()
    def dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.cat([model(a[k:k + 32].to(device), b[k:k + 32].to(device)).flatten().cpu()
                          for k in range(0, a.shape[0], 32)])

    return dist


def inception_score(image_dir, device="cpu", splits: int = 10) -> float:
    """torch-fidelity Inception Score of a folder of images (defaults of `fidelity --isc`)."""
    try:
        import torch_fidelity
    except ImportError as exc:
        raise WeightsError("IS needs torch-fidelity: pip install 'anomalens[generation]'") from exc
    weights = _hub_file(INCEPTION_FILE, "torch-fidelity InceptionV3")
    res = torch_fidelity.calculate_metrics(input1=str(image_dir), isc=True, isc_splits=splits, verbose=False,
                                           cuda=torch.device(device).type == "cuda", save_cpu_ram=True,
                                           feature_extractor_weights_path=str(weights))
    return float(res["inception_score_mean"])


# ---- downstream segmentation --------------------------------------------------------------------------------------
class SmallUNet(nn.Module):
    """A DRAEM-discriminative-style U-Net (Conv-BN-ReLU x2 per level, bilinear up, skips) with 2 output logits."""

    def __init__(self, base: int = 16, levels: int = 4):
        super().__init__()

        def block(i, o):
            return nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(inplace=True),
                                 nn.Conv2d(o, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(inplace=True))

        widths = [base * 2 ** min(i, 3) for i in range(levels)]
        self.down = nn.ModuleList()
        cin = 3
        for w in widths:
            self.down.append(block(cin, w))
            cin = w
        self.up = nn.ModuleList(block(widths[i + 1] + widths[i], widths[i]) for i in reversed(range(levels - 1)))
        self.head = nn.Conv2d(widths[0], 2, 3, padding=1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, blk in enumerate(self.down):
            x = blk(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        for blk, s in zip(self.up, reversed(skips[:-1])):
            x = blk(torch.cat([F.interpolate(x, size=s.shape[-2:], mode="bilinear", align_corners=True), s], 1))
        return self.head(x)


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Focal loss on the softmax probability of the true class (alpha 1, clamp 1e-5), mean over pixels."""
    p = logits.softmax(1)
    pt = torch.where(target[:, 0] > 0.5, p[:, 1], p[:, 0]).clamp(1e-5, 1.0)
    return (-(1 - pt) ** gamma * pt.log()).mean()


def image_scores_from_maps(maps: torch.Tensor) -> torch.Tensor:
    """DRAEM image score: max of the 21x21 mean-filtered pixel-score map."""
    return F.avg_pool2d(maps[:, None], 21, stride=1, padding=10, count_include_pad=True).flatten(1).max(1).values


def downstream_check(train_images: torch.Tensor, train_masks: torch.Tensor, normal_images: torch.Tensor,
                     test_images: torch.Tensor, test_masks: torch.Tensor, epochs: int = 20, batch_size: int = 8,
                     lr: float = 1e-4, seed: int = 0, device="cpu", progress: bool = True) -> dict:
    """Train SmallUNet on generated pairs (+ normals with empty masks, p = 0.5) and score the real test set each epoch.

    Images (N,3,S,S) in [0,1]; masks (N,1,S,S) {0,1}. Returns {"clean": last-epoch metrics,
    "paper": best-epoch metrics by image AUROC + pixel AUROC + pixel AP + AUPRO on the test set, "best_epoch": e}.
    """
    from .. import metrics

    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = SmallUNet().to(device)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [int(epochs * 0.8), int(epochs * 0.9)], gamma=0.2)
    n_per_epoch = max(2 * train_images.shape[0], batch_size)
    labels = (test_masks.flatten(1).amax(1) > 0).long().numpy()
    history = []
    for epoch in (track(range(epochs), "downstream U-Net", total=epochs) if progress else range(epochs)):
        net.train()
        for _ in range(math.ceil(n_per_epoch / batch_size)):
            use_normal = torch.rand(batch_size, generator=g) < 0.5
            gi = torch.randint(train_images.shape[0], (batch_size,), generator=g)
            ni = torch.randint(normal_images.shape[0], (batch_size,), generator=g)
            x = torch.where(use_normal[:, None, None, None], normal_images[ni], train_images[gi])
            m = torch.where(use_normal[:, None, None, None], torch.zeros_like(train_masks[gi]), train_masks[gi])
            loss = focal_loss(net(x.to(device)), m.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sched.step()
        net.eval()
        with torch.no_grad():
            maps = torch.cat([net(test_images[k:k + 16].to(device)).softmax(1)[:, 1].cpu()
                              for k in range(0, test_images.shape[0], 16)])
        res = metrics.compute(image_scores_from_maps(maps).numpy(), labels, maps.numpy(), test_masks[:, 0].numpy() > 0.5)
        history.append(res)
    key = lambda r: sum(_nz(r.get(k)) for k in ("image_auroc", "pixel_auroc", "pixel_ap", "aupro"))  # noqa: E731
    best = max(range(len(history)), key=lambda e: key(history[e]))
    return {"clean": history[-1], "paper": history[best], "best_epoch": best + 1, "epochs": epochs}


def _nz(v) -> float:
    return 0.0 if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def load_folder_pairs(images: Sequence[Path], masks: Optional[Sequence[Path]], size: int):
    """Images (N,3,S,S) in [0,1] (bilinear) and masks (N,1,S,S) {0,1} (resized, pixel GT = value exactly 1 as the
    official test code: uint8(mask/255))."""
    from PIL import Image

    from ..data.image_io import load_image, load_mask

    xs, ms = [], []
    for k, ip in enumerate(images):
        img = load_image(ip).resize((size, size), resample=Image.BILINEAR)
        xs.append(torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 255.0)
        if masks is not None and masks[k] is not None:
            mk = load_mask(masks[k])
            if mk.shape != (img.height, img.width) and Image.open(ip).size != mk.shape[::-1]:
                from ..errors import DataError

                raise DataError(f"mask {masks[k]} does not match the size of image {ip}")
            mi = Image.fromarray(mk.astype(np.uint8) * 255).resize((size, size), resample=Image.BILINEAR)
            ms.append(torch.from_numpy((np.asarray(mi) == 255).astype(np.float32))[None])
        else:
            ms.append(torch.zeros(1, size, size))
    return torch.stack(xs), torch.stack(ms)


def evaluate_generator(gen_dir, root, out, generated=None, n: int = 100, steps: Optional[int] = None, seed: int = 0,
                       epochs: int = 20, size: Optional[int] = None, device="auto", progress: bool = True) -> dict:
    """IS, IC-LPIPS and the downstream check for the defect type of a trained generator; writes OUT/generator_eval.json.

    generated: an existing `anomalens generate` output folder; otherwise n pairs are generated into OUT/generated on
    ROOT's train/good images. A metric whose weights are missing is reported as an error string, not computed.
    """
    from ..device import resolve_device
    from ..io import write_json
    from .data import defect_pairs, list_image_files, split_ids
    from .generate import generate_dataset
    from .pipeline import AnomalyDiffusionPipeline

    dev = resolve_device(device)
    out = Path(out)
    pipe = AnomalyDiffusionPipeline.from_pretrained(gen_dir, device="cpu")
    key = pipe.defects[0]
    category, _, defect = key.partition("+")
    size = size or pipe.image_size
    normals = list_image_files([Path(root) / category / "train" / "good"], "normal images")
    if generated is None:
        generated = out / "generated"
        generate_dataset(gen_dir, [str(p) for p in normals], n, generated, seed=seed, steps=steps, device=dev,
                         progress=progress)
    generated = Path(generated)
    gen_imgs = list_image_files([generated / "test" / defect], "generated images")
    gen_masks = [generated / "ground_truth" / defect / f"{p.stem}_mask.png" for p in gen_imgs]
    for mp in gen_masks:
        if not mp.is_file():
            from ..errors import DataError

            raise DataError(f"generated mask missing: {mp}")
    pairs = defect_pairs(root, category, defect)
    train_ids, test_ids = split_ids(len(pairs.images), pipe.config.split_mode)
    report: dict = {"generator": str(gen_dir), "defect": key, "generated": str(generated), "n_generated": len(gen_imgs),
                    "size": size}
    gx, gm = load_folder_pairs(gen_imgs, gen_masks, size)
    # IS / IC-LPIPS (field libraries; need their weights)
    try:
        report["inception_score"] = inception_score(generated / "test" / defect, device=dev)
    except WeightsError as exc:
        report["inception_score"] = f"error: {exc}"
    try:
        real, _ = load_folder_pairs([pairs.images[i] for i in train_ids], None, 256)
        gen256 = F.interpolate(gx, size=(256, 256), mode="bilinear", align_corners=False)
        report["ic_lpips"] = ic_lpips(gen256 * 2 - 1, real * 2 - 1, lpips_distance(dev))
    except WeightsError as exc:
        report["ic_lpips"] = f"error: {exc}"
    # downstream segmentation: generated pairs + normals -> real test images (good + the defect's ids >= N//3)
    good_test = list_image_files([Path(root) / category / "test" / "good"], "normal test images")
    test_imgs = list(good_test) + [pairs.images[i] for i in test_ids]
    test_masks = [None] * len(good_test) + [pairs.masks[i] for i in test_ids]
    tx, tm = load_folder_pairs(test_imgs, test_masks, size)
    nx, _ = load_folder_pairs(normals, None, size)
    report["downstream"] = downstream_check(gx, gm, nx, tx, tm, epochs=epochs, seed=seed, device=dev, progress=progress)
    report["downstream"]["test_images"] = {"good": len(good_test), defect: len(test_ids),
                                           "first_test_id": test_ids[0] if test_ids else None}
    write_json(out / "generator_eval.json", report)
    return report
