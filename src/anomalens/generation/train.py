"""Training (spec §6): SAE (anomaly tokens + spatial encoder, masked loss eq. 5-6) then the mask embedding (eq. 9).

Seeded (one CPU generator drives every random draw), progress bars, atomic checkpoints every
`checkpoint_every` steps under GEN_DIR/checkpoint, exact resume (optimiser, RNG and step counters restored).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional, Union

import torch
import torch.nn.functional as F

from ..errors import AnomalensError, ModelFormatError
from ..io import atomic_path, write_json
from ..progress import track
from .config import GeneratorConfig
from .data import _resize, augment_batch, load_pairs, training_pairs
from .pipeline import MODEL_JSON, AnomalyDiffusionPipeline, _read_safetensors, latent_mask

CHECKPOINT_DIR = "checkpoint"


def masked_diffusion_loss(eps_pred: torch.Tensor, eps: torch.Tensor, mask_lat: torch.Tensor) -> torch.Tensor:
    """Eq. 5-6: mean over (B,C,h,w) of (m_lat * (eps - eps_theta))^2 — averaged over the whole latent, not the mask area."""
    return ((mask_lat * (eps - eps_pred)) ** 2).mean()


def resolve_config(config: Union[str, Path, GeneratorConfig, None] = None, **overrides) -> GeneratorConfig:
    """'tiny' | GeneratorConfig | a settings .json | a base-model path (folder / .ckpt) | None (real LDM from cache)."""
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if isinstance(config, GeneratorConfig):
        cfg = GeneratorConfig.from_dict(config.to_dict() | overrides)
    elif config is None:
        cfg = GeneratorConfig(**overrides)
    elif str(config) == "tiny":
        cfg = GeneratorConfig.tiny(**overrides)
    elif str(config).endswith(".json"):
        p = Path(config)
        if not p.is_file():
            raise AnomalensError(f"generator settings file not found: {p}")
        try:
            d = json.loads(p.read_text())
        except ValueError as exc:
            raise AnomalensError(f"corrupt generator settings file {p}: {exc}") from exc
        cfg = GeneratorConfig.tiny(**d) if d.get("base") == "tiny" else GeneratorConfig.from_dict(d, p)
        cfg = GeneratorConfig.from_dict(cfg.to_dict() | overrides, p)
    else:
        cfg = GeneratorConfig(base=str(config), **overrides)
    return cfg.validate()


class GeneratorTrainer:
    """Optimises e_a + E (Adam) and e_m (AdamW, wd 0.01) of one defect type on in-memory pairs."""

    def __init__(self, pipe: AnomalyDiffusionPipeline, key: str, images: torch.Tensor, masks: torch.Tensor,
                 generator: torch.Generator):
        self.pipe, self.key, self.cfg, self.gen = pipe, key, pipe.config, generator
        self.images, self.masks = images, masks  # CPU, loaded at 2x size when augmenting
        if key not in pipe.anomaly_embeddings:
            pipe.init_embedding("anomaly", key)
        if key not in pipe.mask_embeddings:
            pipe.init_embedding("mask", key)
        self.opt_sae = torch.optim.Adam([pipe.anomaly_embeddings[key], *pipe.spatial_encoder.parameters()],
                                        lr=self.cfg.lr)
        self.opt_mask = torch.optim.AdamW([pipe.mask_embeddings[key]], lr=self.cfg.mask_lr,
                                          weight_decay=self.cfg.mask_weight_decay)
        self.step_sae = self.step_mask = 0
        self.losses: dict[str, list[float]] = {"sae": [], "mask": []}

    def _batch(self):
        n, B, size = self.images.shape[0], self.cfg.batch_size, self.pipe.image_size
        idx = torch.randint(n, (B,), generator=self.gen)
        x, m = self.images[idx], self.masks[idx]
        if self.cfg.augment:
            x, m = augment_batch(x, m, size, self.gen, self.cfg.augment_prob, self.cfg.max_rotation)
        else:
            x, m = _resize(x, size, "bicubic"), _resize(m, size, "bilinear")
        return x.to(self.pipe.device), m.to(self.pipe.device)

    def _noisy(self, z0: torch.Tensor):
        T = self.pipe.scheduler.config.num_train_timesteps
        t = torch.randint(0, T, (z0.shape[0],), generator=self.gen).to(z0.device)
        eps = torch.randn(z0.shape, generator=self.gen).to(z0.device)
        return self.pipe.scheduler.add_noise(z0, eps, t), t, eps

    def sae_step(self) -> float:
        """One masked-loss step on a (possibly augmented) batch; returns the loss."""
        pipe = self.pipe
        pipe.spatial_encoder.train()
        x, m = self._batch()
        with torch.no_grad():
            z0 = pipe.encode_images(x, self.gen)
        zt, t, eps = self._noisy(z0)
        ctx, _ = pipe.anomaly_conditioning([self.key] * x.shape[0], m, self.gen)
        pred = pipe.unet(zt, t, encoder_hidden_states=ctx).sample
        loss = masked_diffusion_loss(pred, eps, latent_mask(m, pipe.latent_size))
        self.opt_sae.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_sae.step()
        self.step_sae += 1
        value = float(loss.detach())
        self.losses["sae"].append(value)
        return value

    def mask_step(self) -> float:
        """One textual-inversion step on VAE-encoded masks (standard, unmasked LDM loss, eq. 9)."""
        pipe, B = self.pipe, self.cfg.batch_size
        idx = torch.randint(self.masks.shape[0], (B,), generator=self.gen)
        m = (_resize(self.masks[idx], pipe.image_size, "bilinear") >= 0.5).float()
        with torch.no_grad():
            z0 = pipe.encode_images((m * 2 - 1).repeat(1, 3, 1, 1).to(pipe.device), self.gen)
        zt, t, eps = self._noisy(z0)
        ctx, _ = pipe.mask_conditioning(self.key, B, self.gen)
        pred = pipe.unet(zt, t, encoder_hidden_states=ctx).sample
        loss = F.mse_loss(pred, eps)
        self.opt_mask.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_mask.step()
        self.step_mask += 1
        value = float(loss.detach())
        self.losses["mask"].append(value)
        return value

    # ---- checkpoints --------------------------------------------------------------------------------------------
    def save_checkpoint(self, path: Path) -> None:
        """Atomic folder: trainable tensors, optimiser states, RNG state (safetensors) + counters (JSON)."""
        from safetensors.torch import save_file

        pipe, tensors = self.pipe, {}
        tensors["anomaly"] = pipe.anomaly_embeddings[self.key].detach().cpu().contiguous()
        tensors["mask"] = pipe.mask_embeddings[self.key].detach().cpu().contiguous()
        for k, v in pipe.spatial_encoder.state_dict().items():
            tensors[f"encoder/{k}"] = v.detach().cpu().contiguous()
        groups = {}
        for name, opt in (("opt_sae", self.opt_sae), ("opt_mask", self.opt_mask)):
            sd = opt.state_dict()
            for idx, st in sd["state"].items():
                for field, v in st.items():
                    tensors[f"{name}/{idx}/{field}"] = torch.as_tensor(v).detach().cpu().contiguous()
            groups[name] = sd["param_groups"]
        tensors["rng"] = self.gen.get_state()
        meta = {"key": self.key, "step_sae": self.step_sae, "step_mask": self.step_mask,
                "config": self.cfg.to_dict(), "param_groups": groups, "losses": self.losses}
        with atomic_path(path) as tmp:
            tmp.mkdir()
            save_file(tensors, str(tmp / "state.safetensors"))
            (tmp / "state.json").write_text(json.dumps(meta, default=list))

    def load_checkpoint(self, path: Path) -> None:
        """Restore everything save_checkpoint wrote; a corrupt or foreign checkpoint is an error naming the file."""
        meta_path = path / "state.json"
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError) as exc:
            raise ModelFormatError(f"corrupt training checkpoint {meta_path}: {exc}") from exc
        if meta.get("key") != self.key:
            raise ModelFormatError(f"checkpoint {path} is for {meta.get('key')!r}, not {self.key!r}")
        t = _read_safetensors(path / "state.safetensors")
        pipe = self.pipe
        with torch.no_grad():
            pipe.anomaly_embeddings[self.key].copy_(t["anomaly"])
            pipe.mask_embeddings[self.key].copy_(t["mask"])
        pipe.spatial_encoder.load_state_dict({k[len("encoder/"):]: v for k, v in t.items() if k.startswith("encoder/")})
        for name, opt in (("opt_sae", self.opt_sae), ("opt_mask", self.opt_mask)):
            state: dict = {}
            for k, v in t.items():
                if k.startswith(name + "/"):
                    _, idx, field = k.split("/", 2)
                    state.setdefault(int(idx), {})[field] = v
            opt.load_state_dict({"state": state, "param_groups": meta["param_groups"][name]})
        self.gen.set_state(t["rng"])
        self.step_sae, self.step_mask = int(meta["step_sae"]), int(meta["step_mask"])
        self.losses = meta.get("losses", {"sae": [], "mask": []})


def train(root, category: str, defect: str, out, config: Union[str, Path, GeneratorConfig, None] = None,
          steps: Optional[int] = None, mask_steps: Optional[int] = None, seed: Optional[int] = None,
          device="auto", resume: bool = False, progress: bool = True) -> AnomalyDiffusionPipeline:
    """Train the generator of ROOT/category/defect on its first third (spec §7) and save it to `out`."""
    out = Path(out)
    ckpt = out / CHECKPOINT_DIR
    pairs = training_pairs(root, category, defect)  # validates the layout before any model is loaded
    if resume and (ckpt / "state.json").is_file():
        saved = json.loads((ckpt / "state.json").read_text()).get("config", {})
        cfg = resolve_config(GeneratorConfig.from_dict(saved, ckpt / "state.json"), steps=steps, mask_steps=mask_steps)
    else:
        if (out / MODEL_JSON).exists() or (ckpt / "state.json").exists():
            raise AnomalensError(f"{out} already holds a generator; pass --resume to continue it or choose another -o")
        cfg = resolve_config(config, steps=steps, mask_steps=mask_steps, seed=seed)
        if cfg.split_mode != "code":
            pairs = training_pairs(root, category, defect, cfg.split_mode)
    pipe = AnomalyDiffusionPipeline.from_config(cfg, device=device)
    size = pipe.image_size
    images, masks = load_pairs(pairs, 2 * size if cfg.augment else size)
    gen = torch.Generator().manual_seed(cfg.seed)
    trainer = GeneratorTrainer(pipe, pairs.key, images, masks, gen)
    if resume and (ckpt / "state.json").is_file():
        trainer.load_checkpoint(ckpt)
    every = cfg.checkpoint_every
    total_mask = cfg.effective_mask_steps
    for name, step_fn, counter, total in (("SAE", trainer.sae_step, "step_sae", cfg.steps),
                                          ("mask model", trainer.mask_step, "step_mask", total_mask)):
        it = range(getattr(trainer, counter), total)
        for _ in (track(it, f"training {name} [{pairs.key}]", total=len(it)) if progress else it):
            step_fn()
            if getattr(trainer, counter) % every == 0:
                trainer.save_checkpoint(ckpt)
    trainer.save_checkpoint(ckpt)
    pipe.save_pretrained(out)
    write_json(out / "train_log.json", {"key": pairs.key, "train_images": [str(p) for p in pairs.images],
                                         "steps": trainer.step_sae, "mask_steps": trainer.step_mask,
                                         "final_loss": {k: (v[-1] if v else math.nan) for k, v in trainer.losses.items()}})
    return pipe
