"""AnomalyDiffusion cost, one run (CPU is fine; random init, no weights):

  * seconds per blended DDIM step on the real-size LDM UNet (320/640/1280/1280, context 77x1280, latent 32x32):
    our AAR cross-attention processor (official mode, weights on) vs the stock diffusers processor
    (AttnProcessor2_0 everywhere), same UNet, same inputs, interleaved repeats, median; target <= 1.3x;
  * tiny-config training steps/s: SAE step (anomaly tokens + spatial encoder, masked loss, augmentation) vs the
    plain textual-inversion mask-model step measured in the same run.

    python benchmarks/generation.py [--steps 3] [--batch 1] [--train-steps 20] [--threads 1] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def real_unet():
    """The LDM text2img-large UNet topology (spec §2) with random weights."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=32, in_channels=4, out_channels=4, block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=1280, attention_head_dim=8).eval().requires_grad_(False)


def ddim_step_seconds(unet, batch: int, steps: int, repeats: int) -> dict:
    """Median seconds per DDIM step (blend + AAR weights + UNet + scheduler), AAR vs stock, interleaved."""
    from diffusers import DDIMScheduler
    from diffusers.models.attention_processor import AttnProcessor2_0

    from anomalens.generation import AARState, dilate, dilation_radius, install_aar, official_weights
    from anomalens.generation.components import SCHEDULER_SETTINGS

    g = torch.Generator().manual_seed(0)
    ctx = torch.randn(batch, 77, 1280, generator=g)
    z_y = torch.randn(batch, 4, 32, 32, generator=g)
    m = torch.zeros(batch, 1, 32, 32)
    m[..., 10:20, 12:22] = 1
    spans = torch.tensor([[5, 17]] * batch)
    sched = DDIMScheduler(**SCHEDULER_SETTINGS)
    sched.set_timesteps(200)
    ts = sched.timesteps[:steps]
    state = AARState()

    def run(aar: bool) -> float:
        z = torch.randn(batch, 4, 32, 32, generator=g)
        t0 = time.perf_counter()
        with torch.no_grad():
            for t in ts:
                M = m
                if aar:
                    M = dilate(m, dilation_radius(int(t), 200))
                    state.weights, state.spans = official_weights(z, z_y, M), spans
                noise = torch.randn(z.shape, generator=g)
                z = z * M + sched.add_noise(z_y, noise, t.reshape(1)) * (1 - M)
                eps = unet(z, t, encoder_hidden_states=ctx).sample
                z = sched.step(eps, t, z, eta=1.0, generator=g).prev_sample
        state.clear()
        return (time.perf_counter() - t0) / len(ts)

    stock_procs = {n: AttnProcessor2_0() for n in unet.attn_processors}
    unet.set_attn_processor(dict(stock_procs))  # diffusers pops from the dict
    run(False)  # warm-up
    stock, ours = [], []
    for _ in range(repeats):
        unet.set_attn_processor(dict(stock_procs))  # diffusers pops from the dict
        stock.append(run(False))
        install_aar(unet, state)
        ours.append(run(True))
    s, o = statistics.median(stock), statistics.median(ours)
    return {"stock_s_per_step": s, "aar_s_per_step": o, "ratio": o / s, "repeats": repeats, "steps": steps,
            "batch": batch}


def tiny_train_rate(n_steps: int) -> dict:
    """Steps/s of the tiny SAE and mask-model steps (batch 4, augmentation on), same run."""
    from anomalens.generation import AnomalyDiffusionPipeline, GeneratorConfig, GeneratorTrainer

    pipe = AnomalyDiffusionPipeline.from_config(GeneratorConfig.tiny(), device="cpu")
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 128, 128, generator=g) * 2 - 1
    m = torch.zeros(3, 1, 128, 128)
    m[..., 40:80, 30:90] = 1
    tr = GeneratorTrainer(pipe, "widget+crack", x, m, g)
    for fn in (tr.sae_step, tr.mask_step):
        fn()  # warm-up
    out = {}
    for name, fn in (("sae", tr.sae_step), ("mask", tr.mask_step)):
        t0 = time.perf_counter()
        for _ in range(n_steps):
            fn()
        out[f"{name}_steps_per_s"] = n_steps / (time.perf_counter() - t0)
    out["sae_vs_mask_step_time"] = out["mask_steps_per_s"] / out["sae_steps_per_s"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3, help="DDIM steps per timed run")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--train-steps", type=int, default=20)
    ap.add_argument("--json", default=None)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is steadiest on a shared machine)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from anomalens.progress import set_progress

    set_progress(False)
    res = {"threads": torch.get_num_threads(), "torch": torch.__version__}
    res["tiny_train"] = tiny_train_rate(a.train_steps)
    print(json.dumps(res["tiny_train"], indent=2), flush=True)
    t0 = time.perf_counter()
    unet = real_unet()
    res["real_unet_params_M"] = sum(p.numel() for p in unet.parameters()) / 1e6
    res["real_unet_build_s"] = time.perf_counter() - t0
    res["ddim_step"] = ddim_step_seconds(unet, a.batch, a.steps, a.repeats)
    print(json.dumps(res, indent=2))
    if a.json:
        from anomalens.io import write_json

        write_json(a.json, res)


if __name__ == "__main__":
    main()
