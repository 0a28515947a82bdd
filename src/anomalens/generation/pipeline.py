"""AnomalyDiffusionPipeline (spec §3-§5): SAE conditioning, blended-latent DDIM with AAR, the mask model, save/load."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

from ..device import resolve_device
from ..errors import AnomalensError, ModelFormatError, WeightsError
from ..io import atomic_path, write_json
from ..progress import track
from .aar import AARState, dilate, dilation_radius, install_aar, official_weights, paper_weights
from .components import MAX_TOKENS, BaseComponents, load_base, load_diffusers_folder
from .config import PLACEHOLDER, TEMPLATES, GeneratorConfig
from .sae import SpatialEncoder, TokenEmbeddings, splice_tokens

FORMAT = "anomalens.anomalydiffusion"
FORMAT_VERSION = 1
MODEL_JSON = "anomalydiffusion.json"
EMBEDDINGS_FILE = "embeddings.safetensors"
ENCODER_FILE = "spatial_encoder.safetensors"


@dataclass
class AnomalyDiffusionOutput:
    """images (B,3,H,W) float in [0,1]; masks (B,1,H,W) float in {0,1}, pixel-aligned with the images."""

    images: torch.Tensor
    masks: torch.Tensor


def latent_mask(mask: torch.Tensor, size: int) -> torch.Tensor:
    """Spec §3.4: bilinear resize of the (B,1,S,S) mask to the latent size, then >= 0.5 -> 1.

    A mask region covering one latent cell (8x8 pixels aligned to the latent grid) survives; smaller or
    misaligned specks can vanish, as in the official code.
    """
    m = F.interpolate(mask.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=False)
    return (m >= 0.5).to(mask.dtype if mask.is_floating_point() else torch.float32)


def binarize_mask_images(decoded: torch.Tensor, threshold: float = 0.8) -> torch.Tensor:
    """Spec §5: channel mean of the decoded RGB in [-1,1] > threshold -> (B,1,H,W) float {0,1}."""
    return (decoded.float().mean(dim=1, keepdim=True) > threshold).float()


def border_ok(masks: torch.Tensor) -> torch.Tensor:
    """Spec §5 rejection: False where any border row/column holds more than W/3 foreground pixels."""
    m = masks[:, 0] > 0.5
    w = m.shape[-1]
    border = torch.stack([m[:, 0, :].sum(-1), m[:, -1, :].sum(-1), m[:, :, 0].sum(-1), m[:, :, -1].sum(-1)], dim=1)
    return (border <= w / 3).all(dim=1)


def _randn(shape, generator, device, dtype=torch.float32) -> torch.Tensor:
    from diffusers.utils.torch_utils import randn_tensor

    return randn_tensor(shape, generator=generator, device=device, dtype=dtype)


class AnomalyDiffusionPipeline:
    """Few-shot defect generator: frozen LDM components + learned anomaly/mask embeddings + spatial encoder."""

    def __init__(self, base: BaseComponents, config: GeneratorConfig, anomaly_embeddings: TokenEmbeddings,
                 mask_embeddings: TokenEmbeddings, spatial_encoder: SpatialEncoder):
        self.base, self.config = base, config.validate()
        self.unet, self.vae, self.text_encoder = base.unet, base.vae, base.text_encoder
        self.tokenizer, self.scheduler = base.tokenizer, base.scheduler
        self.anomaly_embeddings, self.mask_embeddings, self.spatial_encoder = anomaly_embeddings, mask_embeddings, spatial_encoder
        self.aar_state = AARState(mode=config.aar_mode, include_cls_column=config.include_cls_column)
        install_aar(self.unet, self.aar_state)
        self.placeholder_id = self._single_token_id(PLACEHOLDER)
        if self.spatial_encoder.token_dim != self.token_dim:
            raise ModelFormatError(f"spatial encoder emits {self.spatial_encoder.token_dim}-d tokens but the text "
                                   f"encoder is {self.token_dim}-d")

    # ---- construction -------------------------------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: GeneratorConfig, device="auto", base: Optional[BaseComponents] = None,
                    seed: Optional[int] = None) -> "AnomalyDiffusionPipeline":
        """Fresh (untrained) SAE on the base model; spatial-encoder init seeded by `seed` (default config.seed)."""
        base = base if base is not None else load_base(config.base)
        dim = int(base.text_encoder.config.d_model)
        state = torch.random.get_rng_state()
        try:
            torch.manual_seed(config.seed if seed is None else seed)
            enc = SpatialEncoder(dim, config.num_spatial_tokens, base.image_size, config.encoder_stem,
                                 config.encoder_units, config.encoder_depths)
        finally:
            torch.random.set_rng_state(state)
        pipe = cls(base, config, TokenEmbeddings(), TokenEmbeddings(), enc)
        return pipe.to(device)

    def to(self, device="auto") -> "AnomalyDiffusionPipeline":
        """Move every network to the resolved device."""
        self.device = resolve_device(device)
        self.base.to(self.device)
        self.anomaly_embeddings.to(self.device)
        self.mask_embeddings.to(self.device)
        self.spatial_encoder.to(self.device)
        return self

    @property
    def token_dim(self) -> int:
        """D_tok: width of the text encoder input embeddings (1280 real)."""
        return int(self.text_encoder.config.d_model)

    @property
    def image_size(self) -> int:
        """Generation resolution (256 real, 64 tiny)."""
        return self.base.image_size

    @property
    def latent_size(self) -> int:
        """Latent side (32 real, 8 tiny)."""
        return int(self.unet.config.sample_size)

    @property
    def defects(self) -> list[str]:
        """Trained defect keys ('category+defect')."""
        return self.anomaly_embeddings.keys()

    def _single_token_id(self, word: str) -> int:
        ids = self.tokenizer(word, add_special_tokens=False).input_ids
        if len(ids) != 1:
            raise WeightsError(f"the tokenizer splits {word!r} into {len(ids)} tokens; it must be a single token")
        return int(ids[0])

    def init_embedding(self, kind: str, key: str) -> None:
        """Add a defect type whose k vectors all start at the init word's token embedding (spec §3.1, §5)."""
        cfg = self.config
        word, k, table = ((cfg.init_word, cfg.num_anomaly_tokens, self.anomaly_embeddings) if kind == "anomaly"
                          else (cfg.mask_init_word, cfg.num_mask_tokens, self.mask_embeddings))
        emb = self.text_encoder.model.embed_tokens.weight[self._single_token_id(word)].detach()
        table.add(key, emb[None].repeat(k, 1))
        table.to(self.device)

    def resolve_defect(self, defect: Optional[str]) -> str:
        """Accept 'category+defect', a unique bare defect name, or None when exactly one type is trained."""
        keys = self.defects
        if defect is None:
            if len(keys) != 1:
                raise AnomalensError(f"this generator knows {len(keys)} defect types {keys}; choose one with defect=")
            return keys[0]
        if defect in keys:
            return defect
        hits = [k for k in keys if k.partition("+")[2] == defect]
        if len(hits) == 1:
            return hits[0]
        raise AnomalensError(f"unknown defect {defect!r}; this generator knows {keys}")

    # ---- conditioning (spec §3.3) -------------------------------------------------------------------------------
    def sample_prompts(self, n: int, generator: Optional[torch.Generator] = None) -> list[str]:
        """n random Textual-Inversion templates with the placeholder '*'."""
        idx = torch.randint(len(TEMPLATES), (n,), generator=generator, device=_gen_device(generator))
        return [TEMPLATES[int(i)].format(PLACEHOLDER) for i in idx]

    def tokenize(self, prompts: Sequence[str]) -> torch.Tensor:
        """(B, 77) ids: [CLS] ... [SEP] [PAD]..., no attention mask (LDM-BERT attends over padding)."""
        return self.tokenizer(list(prompts), padding="max_length", max_length=MAX_TOKENS, truncation=True,
                              return_tensors="pt").input_ids.to(self.device)

    def encode_conditioning(self, prompts: Sequence[str], inserts: Sequence[Optional[torch.Tensor]]):
        """Token embeddings with inserts[b] spliced at '*', through the frozen text transformer -> (context, spans)."""
        ids = self.tokenize(prompts)
        is_ph = ids == self.placeholder_id
        if bool((is_ph.sum(1) > 1).any()):
            raise ValueError("a prompt may contain the placeholder '*' at most once")
        pos = torch.where(is_ph.any(1), is_ph.float().argmax(1), torch.full_like(ids[:, 0], -1))
        embeds = self.text_encoder.model.embed_tokens(ids)
        spliced, spans = splice_tokens(embeds, pos, inserts)
        ctx = self.text_encoder(inputs_embeds=spliced, return_dict=True).last_hidden_state
        return ctx, spans

    def anomaly_inserts(self, keys: Sequence[str], masks: torch.Tensor) -> list[torch.Tensor]:
        """[e_a,i (k vectors) ; E(m) (n vectors)] per row (anomaly tokens first, spatial second)."""
        spatial = self.spatial_encoder(masks.to(self.device))
        return [torch.cat([self.anomaly_embeddings[k], spatial[b]], dim=0) for b, k in enumerate(keys)]

    def anomaly_conditioning(self, keys: Sequence[str], masks: torch.Tensor, generator=None):
        """SAE context c(e_a,i, E(m)) (B,77,D) for random templates, and the token spans."""
        return self.encode_conditioning(self.sample_prompts(len(keys), generator), self.anomaly_inserts(keys, masks))

    # ---- latents ------------------------------------------------------------------------------------------------
    def encode_images(self, images: torch.Tensor, generator=None) -> torch.Tensor:
        """z = scaling * sample(Enc(x)) for x in [-1,1] (a posterior sample, as the LDM does)."""
        dist = self.vae.encode(images.to(self.device)).latent_dist
        return dist.sample(generator=generator) * self.base.scaling_factor

    def decode_latents(self, z: torch.Tensor) -> torch.Tensor:
        """x = Dec(z / scaling) clamped to [-1,1]."""
        return self.vae.decode(z / self.base.scaling_factor).sample.clamp(-1, 1)

    def prepare_images(self, images) -> torch.Tensor:
        """Tensor (B,3,H,W) in [0,1], or PIL images / paths -> (B,3,S,S) in [-1,1] at the model size."""
        from ..data.image_io import load_image

        if isinstance(images, torch.Tensor):
            x = images.float()
            if x.ndim == 3:
                x = x[None]
        else:
            import numpy as np

            arrs = []
            for im in images:
                im = load_image(im) if not hasattr(im, "convert") else im.convert("RGB")
                im = im.resize((self.image_size, self.image_size), resample=3)  # bicubic
                arrs.append(torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1).float() / 255.0)
            x = torch.stack(arrs)
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = F.interpolate(x, size=(self.image_size,) * 2, mode="bicubic", align_corners=False).clamp(0, 1)
        return (x * 2 - 1).to(self.device)

    def prepare_masks(self, masks) -> torch.Tensor:
        """Tensor/array (B,[1,]H,W) -> (B,1,S,S) float {0,1} at the model size (nearest resize, > 0.5)."""
        m = torch.as_tensor(masks).float()
        if m.ndim == 3:
            m = m[:, None]
        if m.shape[-1] != self.image_size or m.shape[-2] != self.image_size:
            m = F.interpolate(m, size=(self.image_size,) * 2, mode="nearest")
        return (m > 0.5).float().to(self.device)

    # ---- generation (spec §4) -----------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(self, normal_images, defect: Optional[str] = None, masks=None,
                 num_inference_steps: Optional[int] = None, generator: Optional[torch.Generator] = None,
                 use_aar: Optional[bool] = None, aar_mode: Optional[str] = None, eta: Optional[float] = None,
                 callback: Optional[Callable[[dict], None]] = None, progress: bool = True) -> AnomalyDiffusionOutput:
        """Generate one anomalous image per normal image inside `masks` (sampled from the mask model when None)."""
        key = self.resolve_defect(defect)
        cfg = self.config
        y = self.prepare_images(normal_images)
        B = y.shape[0]
        m = self.prepare_masks(masks) if masks is not None else self.sample_masks(key, B, generator=generator,
                                                                                  progress=progress)
        if m.shape[0] != B:
            raise ValueError(f"{m.shape[0]} masks for {B} normal images")
        steps = int(num_inference_steps or cfg.ddim_steps)
        use_aar = cfg.aar_for(key) if use_aar is None else use_aar
        mode = aar_mode or cfg.aar_mode
        if mode not in ("official", "paper"):
            raise ValueError(f"aar_mode must be 'official' or 'paper', got {mode!r}")
        self._encoder_mode()
        ctx, spans = self.anomaly_conditioning([key] * B, m, generator)
        z_y = self.encode_images(y, generator)
        m_lat = latent_mask(m, self.latent_size)
        z = _randn(z_y.shape, generator, self.device, z_y.dtype)
        self.scheduler.set_timesteps(steps, device=self.device)
        x0_img = None
        st = self.aar_state
        st.mode, st.include_cls_column = mode, cfg.include_cls_column
        try:
            timesteps = self.scheduler.timesteps
            for i, t in enumerate(track(timesteps, "generating", total=len(timesteps)) if progress else timesteps):
                M = m_lat
                st.clear()
                if use_aar and mode == "official":
                    M = dilate(m_lat, dilation_radius(int(t), steps))
                    st.weights, st.spans = official_weights(z, z_y, M), spans
                elif use_aar and x0_img is not None:  # paper mode: needs the previous step's x0 prediction
                    st.weights, st.spans = paper_weights(x0_img, y, m), spans
                noise = _randn(z_y.shape, generator, self.device, z_y.dtype)
                z = z * M + self.scheduler.add_noise(z_y, noise, t.reshape(1)) * (1 - M)  # blend first (code order)
                if callback is not None:
                    callback({"step": i, "t": int(t), "latents": z, "noise": noise, "blend_mask": M, "z_y": z_y})
                eps = self.unet(z, t, encoder_hidden_states=ctx).sample
                out = self.scheduler.step(eps, t, z, eta=cfg.eta if eta is None else eta, generator=generator)
                z = out.prev_sample
                if use_aar and mode == "paper":
                    x0_img = self.decode_latents(out.pred_original_sample)
        finally:
            st.clear()
        images = (self.decode_latents(z) + 1) / 2
        return AnomalyDiffusionOutput(images=images.clamp(0, 1).cpu(), masks=m.cpu())

    def _encoder_mode(self) -> None:
        self.spatial_encoder.train(self.config.spatial_encoder_bn_mode == "batch")

    # ---- mask model (spec §5) -----------------------------------------------------------------------------------
    def mask_conditioning(self, key: str, n: int, generator=None):
        """Context for prompts whose '*' is replaced by the mask embedding e_m of `key`."""
        return self.encode_conditioning(self.sample_prompts(n, generator), [self.mask_embeddings[key]] * n)

    @torch.no_grad()
    def sample_masks(self, defect: Optional[str], num: int, generator=None, num_inference_steps: Optional[int] = None,
                     guidance_scale: Optional[float] = None, reject_empty: bool = True,
                     progress: bool = True) -> torch.Tensor:
        """Sample `num` binary masks (num,1,S,S): DDIM + CFG, channel mean > 0.8, border rejection (+ empty rejection)."""
        key = self.resolve_defect(defect)
        if key not in self.mask_embeddings:
            raise AnomalensError(f"no mask model for {key!r}; train it or pass masks=")
        cfg = self.config
        steps = int(num_inference_steps or cfg.mask_ddim_steps)
        s = cfg.mask_guidance if guidance_scale is None else guidance_scale
        batch = max(num, 1)
        uncond = self.text_encoder(self.tokenize([""] * batch), return_dict=True).last_hidden_state
        kept: list[torch.Tensor] = []
        for attempt in range(cfg.mask_max_batches):
            ctx, _ = self.mask_conditioning(key, batch, generator)
            shape = (batch, self.unet.config.in_channels, self.latent_size, self.latent_size)
            z = _randn(shape, generator, self.device)
            self.scheduler.set_timesteps(steps, device=self.device)
            ts = self.scheduler.timesteps
            for t in (track(ts, f"sampling masks ({len(kept)}/{num})", total=len(ts)) if progress else ts):
                eps_u, eps_c = self.unet(torch.cat([z, z]), t, encoder_hidden_states=torch.cat([uncond, ctx])).sample.chunk(2)
                z = self.scheduler.step(eps_u + s * (eps_c - eps_u), t, z, eta=cfg.eta, generator=generator).prev_sample
            m = binarize_mask_images(self.decode_latents(z), cfg.mask_threshold)
            ok = border_ok(m)
            if reject_empty:
                ok &= m.flatten(1).sum(1) > 0
            kept.extend(m[ok])
            if len(kept) >= num:
                return torch.stack(kept[:num])
        raise AnomalensError(f"the mask model of {key!r} produced {len(kept)} acceptable masks (of {num} wanted) in "
                             f"{cfg.mask_max_batches} batches; train it longer or pass masks")

    # ---- persistence --------------------------------------------------------------------------------------------
    def save_pretrained(self, path, save_base: Optional[bool] = None) -> Path:
        """GEN_DIR: embeddings + spatial encoder (safetensors), settings JSON (written last), base/ for tiny."""
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        save_base = (self.config.base == "tiny") if save_base is None else save_base
        tensors = {f"anomaly/{k}": v for k, v in self.anomaly_embeddings.tensors().items()}
        tensors |= {f"mask/{k}": v for k, v in self.mask_embeddings.tensors().items()}
        with atomic_path(path / EMBEDDINGS_FILE) as tmp:
            save_file(tensors, str(tmp), metadata={"format": FORMAT})
        enc = {k: v.detach().cpu().contiguous() for k, v in self.spatial_encoder.state_dict().items()}
        with atomic_path(path / ENCODER_FILE) as tmp:
            save_file(enc, str(tmp), metadata={"format": FORMAT})
        if save_base:
            with atomic_path(path / "base") as tmp:
                self.base.save(tmp)
        write_json(path / MODEL_JSON, {
            "format": FORMAT, "version": FORMAT_VERSION, "config": self.config.to_dict(),
            "anomaly_defects": self.anomaly_embeddings.keys(), "mask_defects": self.mask_embeddings.keys(),
            "base_saved": bool(save_base), "image_size": self.image_size, "token_dim": self.token_dim,
        })
        return path

    @classmethod
    def from_pretrained(cls, path, device="auto", base: Optional[BaseComponents] = None) -> "AnomalyDiffusionPipeline":
        """Load a GEN_DIR written by save_pretrained; every problem is one error naming the file."""
        path = Path(path)
        meta_path = path / MODEL_JSON
        if not path.is_dir():
            raise ModelFormatError(f"generator folder not found: {path}")
        if not meta_path.is_file():
            raise ModelFormatError(f"not a generator folder (no {MODEL_JSON}): {path}")
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError) as exc:
            raise ModelFormatError(f"corrupt generator settings {meta_path}: {exc}") from exc
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise ModelFormatError(f"{meta_path} is not an anomalens AnomalyDiffusion model")
        if meta.get("version") != FORMAT_VERSION:
            raise ModelFormatError(f"{meta_path} has format version {meta.get('version')!r}; this anomalens reads {FORMAT_VERSION}")
        config = GeneratorConfig.from_dict(meta.get("config", {}), meta_path)
        if base is None:
            base = load_diffusers_folder(path / "base") if meta.get("base_saved") else load_base(config.base)
        tensors = _read_safetensors(path / EMBEDDINGS_FILE)
        enc_sd = _read_safetensors(path / ENCODER_FILE)
        pipe = cls.from_config(config, device="cpu", base=base)
        for kind, table in (("anomaly", pipe.anomaly_embeddings), ("mask", pipe.mask_embeddings)):
            for key in meta.get(f"{kind}_defects", []):
                t = tensors.get(f"{kind}/{key}")
                if t is None or t.ndim != 2 or t.shape[1] != pipe.token_dim:
                    raise ModelFormatError(f"{path / EMBEDDINGS_FILE} lacks a valid {kind} embedding for {key!r}")
                table.add(key, t)
        try:
            pipe.spatial_encoder.load_state_dict(enc_sd)
        except RuntimeError as exc:
            raise ModelFormatError(f"{path / ENCODER_FILE} does not fit the configured spatial encoder: "
                                   f"{str(exc).splitlines()[0]}") from exc
        return pipe.to(device)

    # ---- official AnomalyDiffusion checkpoints (spec §8.3) ------------------------------------------------------
    def import_official_embeddings(self, path, kind: str = "anomaly", key: Optional[str] = None) -> list[str]:
        """Read an official `embeddings.pt` ({'string_to_param': {name: (k, D)}}) with weights_only=True.

        Anomaly checkpoints hold 'category+defect' names; a mask checkpoint holds '*' and needs `key`.
        """
        data = _torch_load(path)
        params = data.get("string_to_param") if isinstance(data, dict) else None
        if not isinstance(params, dict) or not params:
            raise ModelFormatError(f"{path} has no 'string_to_param' dict (not an official embeddings.pt)")
        table = self.anomaly_embeddings if kind == "anomaly" else self.mask_embeddings
        added = []
        for name, t in params.items():
            t = torch.as_tensor(t).float()
            if t.ndim == 1:
                t = t[None]
            if t.ndim != 2 or t.shape[1] != self.token_dim:
                raise ModelFormatError(f"{path}: embedding {name!r} has shape {tuple(t.shape)}, expected (k, {self.token_dim})")
            name = key if (name == PLACEHOLDER and key) else name
            table.add(name, t)
            added.append(name)
        table.to(self.device)
        return added

    def import_official_spatial_encoder(self, path) -> None:
        """Load an official `spatial_encoder.pt` (pSp GradualStyleEncoder state dict; module names match ours)."""
        sd = _torch_load(path)
        if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
            sd = sd["state_dict"]
        if not isinstance(sd, dict):
            raise ModelFormatError(f"{path} is not a state dict")
        sd = {k.removeprefix("module.").removeprefix("spatial_encoder."): v for k, v in sd.items()}
        try:
            self.spatial_encoder.load_state_dict(sd)
        except RuntimeError as exc:
            raise ModelFormatError(f"{path} does not fit the spatial encoder: {str(exc).splitlines()[0]}") from exc


def _gen_device(generator) -> str:
    return generator.device.type if generator is not None else "cpu"


def _torch_load(path):
    path = Path(path)
    if not path.is_file():
        raise ModelFormatError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelFormatError(f"cannot read {path} as a plain tensor checkpoint (weights_only=True): "
                               f"{str(exc).splitlines()[0]}") from exc


def _read_safetensors(path: Path) -> dict:
    from safetensors.torch import load_file

    if not path.is_file():
        raise ModelFormatError(f"generator file missing: {path}")
    try:
        return load_file(str(path))
    except Exception as exc:
        raise ModelFormatError(f"corrupt generator file {path}: {exc}") from exc
