"""Generator settings (spec §2-§6 defaults) and the AAR-on heuristic of spec §4.2."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

from ..errors import ModelFormatError

TEXTURE_CATEGORIES = frozenset({"carpet", "grid", "leather", "tile", "wood"})
TEXTURE_DEFECTS = frozenset({"color", "contamination", "glue", "oil", "liquid", "stain", "gray_stroke", "print",
                             "scratch", "faulty_imprint", "metal_contamination"})

# Textual-Inversion prompt templates (`imagenet_templates_small` as used by the official repo, duplicates kept
# because they shape the sampling distribution); "{}" is replaced by the placeholder "*".
TEMPLATES = (
    "a photo of a {}", "a rendering of a {}", "a cropped photo of the {}", "the photo of a {}",
    "a photo of a clean {}", "a photo of a dirty {}", "a dark photo of the {}", "a photo of my {}",
    "a photo of the cool {}", "a close-up photo of a {}", "a bright photo of the {}", "a cropped photo of a {}",
    "a photo of the {}", "a good photo of the {}", "a photo of one {}", "a close-up photo of the {}",
    "a rendition of the {}", "a photo of the clean {}", "a rendition of a {}", "a photo of a nice {}",
    "a good photo of a {}", "a photo of the nice {}", "a photo of the small {}", "a photo of the weird {}",
    "a photo of the large {}", "a photo of a cool {}", "a photo of a small {}", "an illustration of a {}",
    "a rendering of a {}", "a cropped photo of the {}", "the photo of a {}", "an illustration of a clean {}",
    "an illustration of a dirty {}", "a dark photo of the {}", "an illustration of my {}",
    "an illustration of the cool {}", "a close-up photo of a {}", "a bright photo of the {}",
    "a cropped photo of a {}", "an illustration of the {}", "a good photo of the {}", "an illustration of one {}",
    "a close-up photo of the {}", "a rendition of the {}", "an illustration of the clean {}", "a rendition of a {}",
    "an illustration of a nice {}", "a good photo of a {}", "an illustration of the nice {}",
    "an illustration of the small {}", "an illustration of the weird {}", "an illustration of the large {}",
    "an illustration of a cool {}", "an illustration of a small {}", "a depiction of a {}", "a rendering of a {}",
    "a cropped photo of the {}", "the photo of a {}", "a depiction of a clean {}", "a depiction of a dirty {}",
    "a dark photo of the {}", "a depiction of my {}", "a depiction of the cool {}", "a close-up photo of a {}",
    "a bright photo of the {}", "a cropped photo of a {}", "a depiction of the {}", "a good photo of the {}",
    "a depiction of one {}", "a close-up photo of the {}", "a rendition of the {}", "a depiction of the clean {}",
    "a rendition of a {}", "a depiction of a nice {}", "a good photo of a {}", "a depiction of the nice {}",
    "a depiction of the small {}", "a depiction of the weird {}", "a depiction of the large {}",
    "a depiction of a cool {}", "a depiction of a small {}",
)
PLACEHOLDER = "*"


@dataclass
class GeneratorConfig:
    """Every knob of the generator; defaults are the spec's (official code where it differs from the paper)."""

    base: str = "CompVis/ldm-text2im-large-256"  # "tiny", a local diffusers folder, an original .ckpt, or a hub id (cache only)
    # spatial anomaly embedding (§3)
    num_anomaly_tokens: int = 8  # k (paper 8; release 4)
    num_spatial_tokens: int = 4  # n
    init_word: str = "anomaly"
    encoder_stem: int = 64
    encoder_units: tuple = (3, 4, 14, 3)  # IR-50
    encoder_depths: tuple = (64, 128, 256, 512)
    # mask model (§5)
    num_mask_tokens: int = 4
    mask_init_word: str = "crack"
    # training (§6)
    steps: int = 300_000
    mask_steps: Optional[int] = None  # None: steps // 10 (spec: 300K vs 30K), at least 1
    batch_size: int = 4
    lr: float = 0.02  # effective LDM lr (5e-3 x batch 4)
    mask_lr: float = 0.02
    mask_weight_decay: float = 0.01
    augment: bool = True
    augment_prob: float = 0.5
    max_rotation: int = 20
    checkpoint_every: int = 2000
    split_mode: str = "code"  # "code": ids 0..N//3 inclusive; "strict": ids 0..N//3-1
    seed: int = 23
    # sampling (§2, §4, §5)
    ddim_steps: int = 200
    mask_ddim_steps: int = 100
    eta: float = 1.0
    mask_guidance: float = 5.0
    mask_threshold: float = 0.8
    mask_max_batches: int = 50  # rejection sampling gives up (clear error) after this many batches without a mask
    aar_mode: str = "official"  # or "paper"
    include_cls_column: bool = True
    spatial_encoder_bn_mode: str = "eval"  # or "batch" (official generation never calls eval())
    use_aar: dict = field(default_factory=dict)  # per defect key; missing keys use the spec heuristic

    def validate(self) -> "GeneratorConfig":
        """Raise a clear error for a bad value."""
        if self.aar_mode not in ("official", "paper"):
            raise ValueError(f"aar_mode must be 'official' or 'paper', got {self.aar_mode!r}")
        if self.split_mode not in ("code", "strict"):
            raise ValueError(f"split_mode must be 'code' or 'strict', got {self.split_mode!r}")
        if self.spatial_encoder_bn_mode not in ("eval", "batch"):
            raise ValueError(f"spatial_encoder_bn_mode must be 'eval' or 'batch', got {self.spatial_encoder_bn_mode!r}")
        for name in ("num_anomaly_tokens", "num_spatial_tokens", "num_mask_tokens", "batch_size", "ddim_steps",
                     "mask_ddim_steps", "checkpoint_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps!r}")
        return self

    @property
    def effective_mask_steps(self) -> int:
        """Mask-embedding steps: explicit, else a tenth of the SAE steps (spec ratio 30K : 300K)."""
        return int(self.mask_steps) if self.mask_steps is not None else max(1, self.steps // 10) if self.steps else 0

    def aar_for(self, defect_key: str) -> bool:
        """Whether AAR is on for `category+defect` (explicit setting, else the texture heuristic of spec §4.2)."""
        if defect_key in self.use_aar:
            return bool(self.use_aar[defect_key])
        cat, _, defect = defect_key.partition("+")
        return cat in TEXTURE_CATEGORIES or defect in TEXTURE_DEFECTS

    def to_dict(self) -> dict:
        """JSON-ready dict."""
        d = dataclasses.asdict(self)
        d["encoder_units"], d["encoder_depths"] = list(self.encoder_units), list(self.encoder_depths)
        return d

    @classmethod
    def from_dict(cls, d: dict, source: Any = "") -> "GeneratorConfig":
        """Inverse of to_dict; unknown keys are an error naming the source."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ModelFormatError(f"unknown generator settings {unknown} in {source}")
        d = dict(d)
        for k in ("encoder_units", "encoder_depths"):
            if k in d:
                d[k] = tuple(d[k])
        return cls(**d)

    @classmethod
    def tiny(cls, **overrides) -> "GeneratorConfig":
        """The CPU-test configuration of spec §8.2 (random-init small components)."""
        d = dict(base="tiny", encoder_stem=8, encoder_units=(1, 1, 1, 1), encoder_depths=(8, 16, 32, 64),
                 steps=200, ddim_steps=10, mask_ddim_steps=10, checkpoint_every=50)
        d.update(overrides)
        return cls(**d)
