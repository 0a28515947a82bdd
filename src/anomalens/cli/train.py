"""`anomalens train clipad ROOT --dataset visa -o DIR`: train CLIP-AD's SDP+ stage adapters (heavy imports inside)."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .common import DEVICE_HELP, FORCE_HELP, SET_HELP, check_choice, check_device, parse_settings, require_path, say, user_errors


def register(app: typer.Typer) -> None:
    """Add the `train` command group (`anomalens train clipad ...`) to `app`."""
    train_app = typer.Typer(add_completion=False, no_args_is_help=True, help="Train the trainable parts of a model.")

    @train_app.command("clipad")
    @user_errors
    def clipad(
        root: Path = typer.Argument(..., help="root of the training dataset (its test split is used, as the paper does)"),
        out: Path = typer.Option(..., "--out", "-o", help="adapter directory to write (last/, best/, checkpoints/, training.json)"),
        dataset: str = typer.Option("visa", help="mvtec | visa: layout of ROOT (train on VisA to evaluate MVTec AD)"),
        categories: Optional[List[str]] = typer.Option(None, "--category", help="training categories (default: all)"),
        val_root: Optional[Path] = typer.Option(None, help="target dataset root for per-epoch validation (paper protocol)"),
        val_dataset: Optional[str] = typer.Option(None, help="mvtec | visa layout of --val-root (default: the other one)"),
        val_fraction: float = typer.Option(0.1, help="without --val-root: fraction of training images held out to validate"),
        epochs: int = typer.Option(5, help="training epochs"),
        batch_size: int = typer.Option(8, help="batch size"),
        lr: float = typer.Option(1e-4, help="Adam learning rate"),
        seed: int = typer.Option(42, help="seed of the linear layers' init (and of the holdout draw)"),
        setting: Optional[List[str]] = typer.Option(None, "--set", help=SET_HELP + "; CLIP-AD's backbone, weights, ori_tap, rvs, ..."),
        device: str = typer.Option("auto", help=DEVICE_HELP),
        resume: bool = typer.Option(False, help="continue from the last finished epoch in OUT/checkpoints"),
        force: bool = typer.Option(False, "--force", help=FORCE_HELP),
    ):
        """Train CLIP-AD SDP+ stage linears (frozen CLIP tokens cached once, focal + dice, Adam, per-epoch checkpoints)."""
        from anomalens.outputs import claim

        check_choice(dataset, ("mvtec", "visa"), "--dataset")
        check_device(device)
        require_path(root, "dataset root", folder=True)
        if val_root is not None:
            require_path(val_root, "validation dataset root (--val-root)", folder=True)
        claim(dirs=[out])
        import anomalens
        from anomalens.models.clipad.training import PAPER_SELECTION, train_adapters

        anomalens.resolve_device(device)
        report = train_adapters(root, out, dataset, categories=categories, val_root=val_root, val_dataset=val_dataset,
                                val_fraction=val_fraction, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                                device=device, resume=resume, **parse_settings(setting))
        for h in report["history"]:
            v = h.get("validation", {}).get("mean", {})
            extra = f"  val image AUROC {v['image_auroc']:.4f}  pixel AUROC {v['pixel_auroc']:.4f}" if v else ""
            say(f"epoch {h['epoch']}: loss {h['loss']:.4f}{extra}")
        say(f"last epoch ({report['last']['epoch']}): {report['last']['path']}")
        if report["best"]:
            say(f"best on validation (epoch {report['best']['epoch']}, {report['best']['selected_by']}): {report['best']['path']}")
        say(f"note: {PAPER_SELECTION}")

    app.add_typer(train_app, name="train")
