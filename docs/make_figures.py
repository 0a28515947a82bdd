"""Produce the documentation's figures from real runs (never drawn by hand): `python docs/make_figures.py`.

Writes into docs/figures/ (see docs/figures/README.md for what each file is and which are committed):

* demo_overlay_disc.png, demo_overlays.png — overlays written by `anomalens demo` (synthetic data, the ImageNet
  EfficientNet-Lite0 shipped in a pip package);
* geometry.png — one defect moved to the border of a demo image, scored by PatchCore with geometry "paper" (the
  benchmark's centre crop) and "whole";
* report.png — the first screen of `anomalens report` on the demo run, in headless chromium (skipped when
  /usr/bin/chromium or playwright is absent);
* generated.png — AnomalyDiffusion image/mask pairs: the tiny random-init configuration, or the real base model with
  `--base LDM_DIR_OR_CKPT`;
* real_overlay.png — PatchCore on real MVTec AD hazelnut images from ../shared/assets when present (not committed:
  the data's licence, CC BY-NC-SA, keeps it out of the repository).

About 3-5 minutes on 2 CPU cores. `--only NAME ...` makes some of them; `--work DIR` keeps the runs.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent
FIGURES = HERE / "figures"
ASSETS = Path(os.environ.get("ANOMALENS_ASSETS", HERE.parents[1] / "shared" / "assets"))
MAX_BYTES = 190 * 1024  # the limit is 200 KB a file


def save_png(img: Image.Image, name: str, max_width: int = 900) -> Path:
    """Save a figure small: at most max_width wide; palette-quantised, then shrunk, until it is under 200 KB."""
    img = img.convert("RGB")
    path = FIGURES / name
    while True:
        if img.width > max_width:
            img = img.resize((max_width, round(img.height * max_width / img.width)), Image.LANCZOS)
        img.save(path, optimize=True)
        if path.stat().st_size > MAX_BYTES:
            img.quantize(256, dither=Image.Dither.NONE).save(path, optimize=True)
        if path.stat().st_size <= MAX_BYTES or img.width < 200:
            break
        max_width = int(img.width * 0.85)
    print(f"wrote {path} ({path.stat().st_size // 1024} KiB)")
    return path


def stack(images: list[Image.Image], horizontal: bool = False, gap: int = 8) -> Image.Image:
    """Images side by side (or one under the other) on white."""
    if horizontal:
        w, h = sum(i.width for i in images) + gap * (len(images) - 1), max(i.height for i in images)
    else:
        w, h = max(i.width for i in images), sum(i.height for i in images) + gap * (len(images) - 1)
    canvas, pos = Image.new("RGB", (w, h), "white"), 0
    for im in images:
        canvas.paste(im, (pos, 0) if horizontal else (0, pos))
        pos += (im.width if horizontal else im.height) + gap
    return canvas


def caption(img: Image.Image, text: str) -> Image.Image:
    """A line of text above an image."""
    out = Image.new("RGB", (img.width, img.height + 22), "white")
    out.paste(img, (0, 22))
    ImageDraw.Draw(out).text((4, 4), text, fill=(0, 0, 0))
    return out


def anomalens_cli(*args: str) -> None:
    """Run the installed CLI in a subprocess (as a user would)."""
    cmd = [sys.executable, "-c", "from anomalens.cli.main import main; main()", *args]
    print("$ anomalens " + " ".join(args), flush=True)
    subprocess.run(cmd, check=True, env=dict(os.environ, ANOMALENS_PROGRESS="0"))


# ------------------------------------------------------------------------------------------------ figures


def demo_figures(work: Path) -> Path:
    """`anomalens demo` on two categories; its overlays become demo_overlay_disc.png and demo_overlays.png."""
    demo = work / "anomalens-demo"
    if not (demo / "metrics.json").is_file():
        anomalens_cli("demo", "--out", str(demo), "--category", "disc", "--category", "weave", "--device", "cpu")
    overlays = demo / "overlays"
    disc = overlays / "disc" / "hole__000.png"
    save_png(Image.open(disc), "demo_overlay_disc.png", max_width=700)
    normal, defect = overlays / "weave" / "good__000.png", overlays / "weave" / "scratch__000.png"
    save_png(stack([Image.open(normal), Image.open(defect)]), "demo_overlays.png", max_width=700)
    return demo


def geometry_figure(work: Path, demo: Path) -> None:
    """A 'hole' moved next to the left border (the texture is periodic, so rolling leaves no seam), scored with the
    paper's centre crop and with the whole image."""
    import anomalens
    from anomalens.data import MVTecAD
    from anomalens.viz import render_overlay

    data = demo / "data"
    image = np.asarray(Image.open(data / "weave" / "test" / "hole" / "000.png").convert("RGB"))
    mask = np.asarray(Image.open(data / "weave" / "ground_truth" / "hole" / "000_mask.png")) > 0
    xs = np.nonzero(mask.any(axis=0))[0]
    shift = 12 - int(xs.max())  # the defect's right edge to x = 12: inside the 16 px the 256 -> 224 crop removes
    image, mask = np.roll(image, shift, axis=1), np.roll(mask, shift, axis=1)
    path = work / "border_defect.png"
    Image.fromarray(image).save(path)
    normals = sorted(str(p) for p in (data / "weave" / "test" / "good").glob("*.png"))
    panels = []
    for geometry in ("paper", "whole"):
        model = anomalens.create("patchcore", backbone="tf_efficientnet_lite0", geometry=geometry, device="cpu")
        model.fit(MVTecAD(data, "weave", "train"))
        pred = model.predict([str(path)] + normals)  # one colour range for the run, as the CLI's overlays
        amap = pred.map_at_original_size(0)
        lo, hi = float(np.nanmin(pred.anomaly_maps)), float(np.nanmax(pred.anomaly_maps))
        canvas = render_overlay(image / 255.0, amap, lo, hi, mask, float(pred.image_scores[0]), None)
        text = (f'geometry="{geometry}": score {pred.image_scores[0]:.1f}; the {len(normals)} normal test images score '
                f"{pred.image_scores[1:].min():.1f} to {pred.image_scores[1:].max():.1f}")
        panels.append(caption(Image.fromarray(canvas), text))
    save_png(stack(panels, horizontal=False), "geometry.png", max_width=600)


def report_figure(work: Path, demo: Path) -> None:
    """The first screen of the demo run's report in headless chromium."""
    chromium = Path("/usr/bin/chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        print("skip report.png: playwright is not installed (pip install -e '.[report]')")
        return
    if not chromium.is_file():
        print("skip report.png: no /usr/bin/chromium")
        return
    html = work / "report.html"
    anomalens_cli("report", str(demo), "-o", str(html))
    shot = work / "report_screen.png"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(chromium), headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1100, "height": 760})
        page.goto(html.as_uri())
        page.screenshot(path=str(shot))
        browser.close()
    save_png(Image.open(shot), "report.png", max_width=900)


def generated_figure(work: Path, demo: Path, base: str | None) -> None:
    """Train the generator on one defect of the demo data, generate pairs, show normal | generated | mask."""
    from anomalens.generation import train
    from anomalens.generation.generate import generate_dataset

    data = demo / "data"
    gen, out = work / "gen-weave-hole", work / "synth-weave"
    config = base if base else "tiny"
    steps = None if base else 50
    if not (gen / "anomalydiffusion.json").is_file():  # a kept --work folder reuses its trained generator
        train(data, "weave", "hole", gen, config=config, steps=steps, device="cpu", progress=False)
    shutil.rmtree(out, ignore_errors=True)
    masks = None if base else [str(data / "weave" / "ground_truth" / "hole")]  # tiny: its mask model is untrained
    generate_dataset(gen, [str(data / "weave" / "train" / "good")], n=3, out=out, seed=0, steps=None if base else 10,
                     masks=masks, device="cpu", progress=False)
    rows = []
    for i in range(3):
        img = Image.open(out / "test" / "hole" / f"{i:03d}.png").convert("RGB")
        msk = Image.open(out / "ground_truth" / "hole" / f"{i:03d}_mask.png").convert("RGB")
        if img.width < 160:  # the tiny config's small images, enlarged to be seen
            img, msk = img.resize((160, 160), Image.NEAREST), msk.resize((160, 160), Image.NEAREST)
        rows.append(stack([img, msk], horizontal=True))
    label = "real base model" if base else "tiny random-init config (noise: the outputs' form, not quality)"
    save_png(caption(stack(rows, horizontal=True), f"AnomalyDiffusion, {label} - image | mask"), "generated.png", max_width=900)


def real_overlay_figure(work: Path) -> None:
    """PatchCore (pip-shipped EfficientNet-Lite0) on real MVTec AD hazelnut images from ../shared/assets."""
    root = ASSETS / "mvtec-reduced" / "hazelnut_reduced"
    if not root.is_dir():
        print(f"skip real_overlay.png: no real assets at {root}")
        return
    import anomalens
    from anomalens.data import MVTecAD, load_image
    from anomalens.viz import render_overlay

    category = next(p.name for p in root.iterdir() if p.is_dir()) if not (root / "train").is_dir() else None
    data_root, cat = (root, category) if category else (root.parent, root.name)
    model = anomalens.create("patchcore", backbone="tf_efficientnet_lite0", device="cpu")
    model.fit(MVTecAD(data_root, cat, "train"))
    test = MVTecAD(data_root, cat, "test")
    pred = model.predict(test)
    i = int(np.argmax(pred.image_scores))
    amap = pred.map_at_original_size(i)
    image = np.asarray(load_image(pred.paths[i]), dtype=np.float32) / 255
    lo, hi = float(np.nanmin(pred.anomaly_maps)), float(np.nanmax(pred.anomaly_maps))
    canvas = render_overlay(image, amap, lo, hi, pred.mask_at_original_size(i), float(pred.image_scores[i]), None)
    save_png(Image.fromarray(canvas), "real_overlay.png", max_width=700)


FIGURES_BY_NAME = ("demo", "geometry", "report", "generated", "real")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="+", choices=FIGURES_BY_NAME, help="make only these figures")
    ap.add_argument("--work", type=Path, help="keep the runs in this folder (default: a temporary one)")
    ap.add_argument("--base", help="AnomalyDiffusion base model (LDM folder or model.ckpt) for generated.png")
    args = ap.parse_args(argv)
    wanted = set(args.only or FIGURES_BY_NAME)
    FIGURES.mkdir(exist_ok=True)
    work = args.work or Path(tempfile.mkdtemp(prefix="anomalens-figures-"))
    work.mkdir(parents=True, exist_ok=True)
    import torch

    torch.manual_seed(0)
    from anomalens.progress import set_progress

    set_progress(False)
    demo = demo_figures(work) if wanted & {"demo", "geometry", "report", "generated"} else None
    if "geometry" in wanted:
        geometry_figure(work, demo)
    if "report" in wanted:
        report_figure(work, demo)
    if "generated" in wanted:
        generated_figure(work, demo, args.base)
    if "real" in wanted:
        real_overlay_figure(work)
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
