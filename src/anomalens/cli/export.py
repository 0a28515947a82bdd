"""`anomalens export`: a saved model as one ONNX graph (+ JSON side file), checked against the torch model."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Tuple

import typer

from .common import console, require_model_dir, say, user_errors


@user_errors
def export(
    model_dir: Path = typer.Argument(..., help="a model saved by `anomalens fit`"),
    out: Path = typer.Option(Path("model.onnx"), "--out", "-o", help="the .onnx file to write (its side file: same name, .json)"),
    input_size: Optional[Tuple[int, int]] = typer.Option(None, help="H W of the graph input, for models whose transform "
                                                                    "keeps the aspect ratio (no fixed output size)"),
    opset: int = typer.Option(18, help="ONNX opset (col2im, used by WinCLIP, needs 18)"),
    check: bool = typer.Option(True, help="compare onnxruntime with the torch model on 2 random inputs"),
    force: bool = typer.Option(False, "--force", help="replace an existing .onnx / .json"),
):
    """Export a fitted model to ONNX: input `image` (N,3,H,W), outputs `image_score` (N,) and `anomaly_map` (N,H,W)."""
    from anomalens.outputs import check_outputs

    if out.suffix != ".onnx":
        raise ValueError(f"--out must end in .onnx, got {out}")
    require_model_dir(model_dir)
    check_outputs(files=[out, out.with_suffix(".json")])
    import torch

    import anomalens
    from anomalens.deploy.export import export_onnx, parity

    det = anomalens.load(model_dir, device="cpu")
    path = export_onnx(det, out, input_size, opset=opset, source=str(model_dir.resolve()), overwrite=force)
    size_mb = path.stat().st_size / 2**20
    say(f"exported {det.name} -> {path} ({size_mb:.1f} MiB) + {path.with_suffix('.json').name}")
    if check:
        from anomalens.deploy.export import input_size as graph_size

        H, W = graph_size(det, input_size)
        gen = torch.Generator().manual_seed(0)
        p = parity(det, path, torch.randn(2, 3, H, W, generator=gen))
        console.print(f"parity vs torch on 2 random inputs: max |Δscore| {p['score_max_abs']:.2e} (rel {p['score_max_rel']:.1e}), "
                      f"max |Δmap| {p['map_max_abs']:.2e} (rel {p['map_max_rel']:.1e})", highlight=False)


def register(app: typer.Typer) -> None:
    app.command()(export)
