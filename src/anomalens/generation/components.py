"""The frozen base model (spec §2, §8): tiny random-init components, or CompVis LDM text2img-large-256 from disk.

Both sizes are plain diffusers/transformers classes; every size downstream is read from their configs.
Nothing here downloads: a hub id is resolved from the local cache only, and a miss is one clear error.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import WeightsError
from .config import PLACEHOLDER, TEMPLATES

SCHEDULER_SETTINGS = dict(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                          clip_sample=False, set_alpha_to_one=False, steps_offset=1, timestep_spacing="leading",
                          prediction_type="epsilon")
MAX_TOKENS = 77
LDM_HUB_ID = "CompVis/ldm-text2im-large-256"
TINY_SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


@dataclass
class BaseComponents:
    """The frozen LDM parts: UNet, VAE, text encoder (LDM-BERT), tokenizer, DDIM scheduler."""

    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    scheduler: Any

    def freeze(self) -> "BaseComponents":
        """requires_grad False and eval() for every network (LDM `disabled_train`)."""
        for m in (self.unet, self.vae, self.text_encoder):
            m.requires_grad_(False)
            m.eval()
        return self

    def to(self, device) -> "BaseComponents":
        """Move the networks to `device`."""
        for m in (self.unet, self.vae, self.text_encoder):
            m.to(device)
        return self

    @property
    def vae_scale_factor(self) -> int:
        """Pixel-to-latent downsampling (8 for both sizes)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def image_size(self) -> int:
        """Training/generation resolution = UNet sample size x VAE factor (256 real, 64 tiny)."""
        return int(self.unet.config.sample_size) * self.vae_scale_factor

    @property
    def scaling_factor(self) -> float:
        """Latent scale (0.18215)."""
        return float(self.vae.config.scaling_factor)

    def save(self, path: Path) -> None:
        """diffusers layout: one sub-folder per component, safetensors weights."""
        self.unet.save_pretrained(path / "unet", safe_serialization=True)
        self.vae.save_pretrained(path / "vqvae", safe_serialization=True)
        self.text_encoder.save_pretrained(path / "bert", safe_serialization=True)
        self.tokenizer.save_pretrained(path / "tokenizer")
        self.scheduler.save_pretrained(path / "scheduler")


def tiny_vocab() -> list[str]:
    """Special tokens, the placeholder, the init words and every word of the prompt templates."""
    words = {w for t in TEMPLATES for w in t.replace("{}", "").replace("-", " - ").split()}
    words |= {PLACEHOLDER, "anomaly", "crack", "-"}
    return TINY_SPECIAL + sorted(words)


def build_tiny(seed: int = 0) -> BaseComponents:
    """Random-init small components of spec §8.2 (deterministic for a seed); no files, no downloads."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from diffusers.pipelines.latent_diffusion.pipeline_latent_diffusion import LDMBertConfig, LDMBertModel
    from transformers import BertTokenizer

    vocab = tiny_vocab()
    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(vocab)}, model_max_length=MAX_TOKENS)
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                            up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 16, 16, 16),
                            layers_per_block=1, latent_channels=4, norm_num_groups=8, sample_size=64,
                            scaling_factor=0.18215)
        unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64),
                                    layers_per_block=1, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                                    attention_head_dim=2, norm_num_groups=8)
        bert = LDMBertModel(LDMBertConfig(vocab_size=len(vocab), d_model=32, encoder_layers=2, encoder_ffn_dim=64,
                                          encoder_attention_heads=2, head_dim=16, max_position_embeddings=MAX_TOKENS,
                                          dropout=0.0, attention_dropout=0.0, activation_dropout=0.0))
    finally:
        torch.random.set_rng_state(state)
    return BaseComponents(unet, vae, bert, tokenizer, DDIMScheduler(**SCHEDULER_SETTINGS)).freeze()


def _missing_base(what: str) -> WeightsError:
    return WeightsError(
        f"LDM base model not found: {what}. Pass --config PATH to a local diffusers-format copy of {LDM_HUB_ID} "
        "(folders unet/ vqvae/ bert/ tokenizer/ scheduler/) or to the original txt2img-f8-large model.ckpt, "
        "or --config tiny for the random-init test model (offline; nothing is downloaded)")


def load_base(spec: str) -> BaseComponents:
    """'tiny' | a diffusers-format folder | an original LDM .ckpt | a hub id present in the local HF cache."""
    if spec == "tiny":
        return build_tiny()
    path = Path(os.path.expanduser(spec))
    if path.is_file() and path.suffix in (".ckpt", ".pt", ".pth", ".safetensors"):
        return convert_original_checkpoint(path)
    if path.is_dir():
        return load_diffusers_folder(path)
    if "/" in spec and not path.exists() and not spec.startswith((".", "/", "~")):
        try:
            from huggingface_hub import snapshot_download

            folder = snapshot_download(spec, local_files_only=True)
        except Exception as exc:  # offline cache miss: fail fast, no retries
            raise _missing_base(f"{spec!r} is not in the local Hugging Face cache ({type(exc).__name__})") from None
        return load_diffusers_folder(Path(folder))
    raise _missing_base(f"{path} does not exist")


def load_diffusers_folder(path: Path) -> BaseComponents:
    """Load unet/ vqvae/ bert/ tokenizer/ scheduler/ (the HF `ldm-text2im-large-256` layout) with local files only."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from diffusers.pipelines.latent_diffusion.pipeline_latent_diffusion import LDMBertModel
    from transformers import BertTokenizer

    for sub in ("unet", "vqvae", "bert", "tokenizer"):
        if not (path / sub).is_dir():
            raise _missing_base(f"{path / sub} is missing")
    try:
        # low_cpu_mem_usage=False: what diffusers falls back to anyway without `accelerate`, minus its notice about it
        unet = UNet2DConditionModel.from_pretrained(path / "unet", local_files_only=True, low_cpu_mem_usage=False)
        vae = AutoencoderKL.from_pretrained(path / "vqvae", local_files_only=True, low_cpu_mem_usage=False)
        bert = LDMBertModel.from_pretrained(path / "bert", local_files_only=True, low_cpu_mem_usage=False)
        tok = BertTokenizer.from_pretrained(path / "tokenizer", local_files_only=True)
    except (OSError, ValueError, RuntimeError) as exc:
        raise WeightsError(f"cannot load the LDM base model from {path}: {exc}") from exc
    if (path / "scheduler").is_dir():
        sched = DDIMScheduler.from_pretrained(path / "scheduler", local_files_only=True)
        sched = DDIMScheduler.from_config(sched.config, **SCHEDULER_SETTINGS)  # spec §2 sampler settings
    else:
        sched = DDIMScheduler(**SCHEDULER_SETTINGS)
    tok.model_max_length = MAX_TOKENS
    return BaseComponents(unet, vae, bert, tok, sched).freeze()


# ---- original CompVis checkpoint (spec §8.3, option B) ------------------------------------------------------------

LDM_ORIGINAL_CONFIG = {"model": {"params": {
    "linear_start": 0.00085, "linear_end": 0.012, "timesteps": 1000, "scale_factor": 0.18215, "image_size": 32,
    "unet_config": {"params": {"image_size": 32, "in_channels": 4, "out_channels": 4, "model_channels": 320,
                               "attention_resolutions": [4, 2, 1], "num_res_blocks": 2, "channel_mult": [1, 2, 4, 4],
                               "num_heads": 8, "use_spatial_transformer": True, "transformer_depth": 1,
                               "context_dim": 1280, "use_checkpoint": True, "legacy": False}},
    "first_stage_config": {"params": {"embed_dim": 4, "ddconfig": {
        "double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
        "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}}},
    "cond_stage_config": {"params": {"n_embed": 1280, "n_layer": 32}},
}}}


def ldm_bert_key_map(n_layers: int = 32) -> dict[str, str]:
    """Original `cond_stage_model.transformer.*` keys -> diffusers LDMBertModel keys (spec §8.3 mapping)."""
    src, dst = "cond_stage_model.transformer.", "model."
    m = {src + "token_emb.weight": dst + "embed_tokens.weight", src + "pos_emb.emb.weight": dst + "embed_positions.weight",
         src + "norm.weight": dst + "layer_norm.weight", src + "norm.bias": dst + "layer_norm.bias"}
    for i in range(n_layers):
        a, f, o = f"{src}attn_layers.layers.{2 * i}.", f"{src}attn_layers.layers.{2 * i + 1}.", f"{dst}layers.{i}."
        for p in ("weight", "bias"):
            m[f"{a}0.{p}"] = f"{o}self_attn_layer_norm.{p}"
            m[f"{a}1.to_out.{p}"] = f"{o}self_attn.out_proj.{p}"
            m[f"{f}0.{p}"] = f"{o}final_layer_norm.{p}"
            m[f"{f}1.net.0.0.{p}"] = f"{o}fc1.{p}"
            m[f"{f}1.net.2.{p}"] = f"{o}fc2.{p}"
        for q in ("q", "k", "v"):
            m[f"{a}1.to_{q}.weight"] = f"{o}self_attn.{q}_proj.weight"
    return m


def convert_ldm_bert_state_dict(sd: dict, n_layers: int = 32) -> dict:
    """Rename the text-encoder tensors of an original LDM state dict; a missing key is an error naming it."""
    out = {}
    for k, v in ldm_bert_key_map(n_layers).items():
        if k not in sd:
            raise WeightsError(f"original LDM checkpoint lacks the text-encoder tensor {k!r}")
        out[v] = sd[k]
    return out


def convert_original_checkpoint(path: Path) -> BaseComponents:
    """Build the real components from `txt2img-f8-large/model.ckpt` (loaded with weights_only=True, no pickle code)."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from diffusers.pipelines.latent_diffusion.pipeline_latent_diffusion import LDMBertConfig, LDMBertModel
    from diffusers.pipelines.stable_diffusion.convert_from_ckpt import (
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
        create_unet_diffusers_config,
        create_vae_diffusers_config,
    )
    from transformers import BertTokenizer

    tok_dir = path.parent / "tokenizer"
    if not tok_dir.is_dir():
        raise _missing_base(f"the bert-base-uncased tokenizer folder {tok_dir} (vocab.txt) next to {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
            sd = ckpt.get("state_dict", ckpt)
    except Exception as exc:
        raise WeightsError(f"cannot read the LDM checkpoint {path}: {exc}") from exc
    cfg = LDM_ORIGINAL_CONFIG
    ucfg = create_unet_diffusers_config(cfg, image_size=32)
    unet = UNet2DConditionModel(**ucfg)
    unet.load_state_dict(convert_ldm_unet_checkpoint(sd, ucfg))
    vcfg = create_vae_diffusers_config(cfg, image_size=256)
    vae = AutoencoderKL(**vcfg, scaling_factor=0.18215)
    vae.load_state_dict(convert_ldm_vae_checkpoint(sd, vcfg))
    bert = LDMBertModel(LDMBertConfig(d_model=1280, encoder_layers=32, encoder_ffn_dim=5120, encoder_attention_heads=8,
                                      head_dim=64, max_position_embeddings=MAX_TOKENS, vocab_size=30522, dropout=0.0))
    bert.load_state_dict(convert_ldm_bert_state_dict(sd), strict=False)  # to_logits is unused by the encoder
    tok = BertTokenizer.from_pretrained(tok_dir, local_files_only=True)
    tok.model_max_length = MAX_TOKENS
    return BaseComponents(unet, vae, bert, tok, DDIMScheduler(**SCHEDULER_SETTINGS)).freeze()
