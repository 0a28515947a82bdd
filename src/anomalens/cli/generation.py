"""`anomalens train-generator | generate | evaluate-generator`: AnomalyDiffusion defect generation.

torch / diffusers are imported inside the commands so `anomalens --help` stays fast.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .common import DEVICE_HELP, FORCE_HELP, check_device, console, esc, require_inputs, require_path, say, user_errors


@user_errors
def train_generator(
    root: Path = typer.Argument(..., help="MVTec-layout dataset root"),
    category: str = typer.Option(..., "--category", help="category folder, e.g. hazelnut"),
    defect: str = typer.Option(..., "--defect", help="defect folder under test/, e.g. crack"),
    out: Path = typer.Option(..., "--out", "-o", help="generator folder (GEN_DIR) to write"),
    config: Optional[str] = typer.Option(None, "--config", help="tiny | a local LDM folder/.ckpt | a settings .json "
                                         "(default: CompVis/ldm-text2im-large-256 from the local cache)"),
    steps: Optional[int] = typer.Option(None, "--steps", help="SAE training steps (mask model: a tenth)"),
    seed: Optional[int] = typer.Option(None, "--seed", help="training seed (default 23)"),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    resume: bool = typer.Option(False, "--resume", help="continue from GEN_DIR/checkpoint"),
    force: bool = typer.Option(False, "--force", help=FORCE_HELP),
):
    """Train the anomaly embedding + spatial encoder and the mask model on the first third of one defect type."""
    from anomalens.outputs import claim

    check_device(device)
    require_path(root, "dataset root", folder=True)
    claim(dirs=[out])
    from anomalens.generation import train

    pipe = train(root, category, defect, out, config=config, steps=steps, seed=seed, device=device, resume=resume)
    say(f"trained generator for {pipe.defects[0]} -> {out}")


@user_errors
def generate(
    gen_dir: Path = typer.Argument(..., help="a folder written by `anomalens train-generator`"),
    normal_images: List[str] = typer.Argument(..., help="normal images: files, folders or glob patterns"),
    n: int = typer.Option(..., "-n", help="number of (image, mask) pairs"),
    out: Path = typer.Option(..., "--out", "-o", help="output folder (gets test/D and ground_truth/D)"),
    seed: int = typer.Option(0, "--seed", help="seed: same seed, same bytes"),
    steps: Optional[int] = typer.Option(None, "--steps", help="DDIM steps (default 200)"),
    defect: Optional[str] = typer.Option(None, "--defect", help="defect type when GEN_DIR holds several"),
    masks: Optional[List[str]] = typer.Option(None, "--masks", help="use these masks (files/folders/globs) instead "
                                              "of sampling the mask model"),
    aar: Optional[bool] = typer.Option(None, "--aar/--no-aar", help="adaptive attention re-weighting (default: per "
                                       "defect type heuristic)"),
    batch_size: int = typer.Option(4, help="images per DDIM batch"),
    force: bool = typer.Option(False, "--force", help="write into a non-empty output folder"),
    device: str = typer.Option("auto", help=DEVICE_HELP),
):
    """Generate N defect images with pixel masks, written as an MVTec-layout test set."""
    from anomalens.outputs import claim

    check_device(device)
    require_path(gen_dir, "generator folder", folder=True)
    require_inputs(normal_images, "normal image")
    if masks:
        require_inputs(masks, "mask")
    claim(dirs=[out])
    from anomalens.generation.generate import generate_dataset

    files = generate_dataset(gen_dir, normal_images, n, out, seed=seed, steps=steps, defect=defect, masks=masks,
                             force=force, device=device, batch_size=batch_size, use_aar=aar)
    say(f"wrote {len(files)} image/mask pairs -> {out}")


@user_errors
def evaluate_generator(
    gen_dir: Path = typer.Argument(..., help="a folder written by `anomalens train-generator`"),
    root: Path = typer.Argument(..., help="the MVTec-layout dataset it was trained on"),
    out: Path = typer.Option(Path("generator-eval"), "--out", "-o", help="report folder (generator_eval.json)"),
    generated: Optional[Path] = typer.Option(None, "--generated", help="an existing `anomalens generate` output "
                                             "(default: generate -n pairs into OUT/generated)"),
    n: int = typer.Option(100, "-n", help="pairs to generate when --generated is not given"),
    steps: Optional[int] = typer.Option(None, "--steps", help="DDIM steps when generating"),
    epochs: int = typer.Option(20, "--epochs", help="downstream U-Net epochs"),
    size: Optional[int] = typer.Option(None, "--size", help="downstream image size (default: the generator's)"),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    force: bool = typer.Option(False, "--force", help=FORCE_HELP),
):
    """IS, IC-LPIPS and a downstream U-Net check (clean last-epoch protocol next to the paper's test-set pick)."""
    from rich.table import Table

    from anomalens.outputs import claim

    check_device(device)
    require_path(gen_dir, "generator folder", folder=True)
    require_path(root, "dataset root", folder=True)
    if generated is not None:
        require_path(generated, "generated data set (--generated)", folder=True)
    claim(files=[out / "generator_eval.json"], dirs=[] if generated is not None else [out / "generated"])
    from anomalens.generation.evaluate import evaluate_generator as run

    rep = run(gen_dir, root, out, generated=generated, n=n, steps=steps, seed=seed, epochs=epochs, size=size,
              device=device)
    for name in ("inception_score", "ic_lpips"):
        v = rep[name]
        console.print(f"{name}: {v:.4f}" if isinstance(v, float) else f"{name}: [yellow]{esc(v)}[/yellow]", highlight=False,
                      soft_wrap=True)
    ds = rep["downstream"]
    t = Table(title=f"downstream U-Net on real test images of {rep['defect']}")
    t.add_column("protocol")
    keys = [k for k in ds["clean"] if isinstance(ds["clean"][k], float)]
    for k in keys:
        t.add_column(k, justify="right")
    t.add_row(f"clean (last epoch {ds['epochs']})", *[f"{ds['clean'][k]:.3f}" for k in keys])
    t.add_row(f"paper (best on test, epoch {ds['best_epoch']})", *[f"{ds['paper'][k]:.3f}" for k in keys])
    console.print(t)
    say(f"report -> {out / 'generator_eval.json'}")


def register(app: typer.Typer) -> None:
    """Add the generation commands to the app."""
    app.command("train-generator")(train_generator)
    app.command("generate")(generate)
    app.command("evaluate-generator")(evaluate_generator)
