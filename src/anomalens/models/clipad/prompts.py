"""CLIP-AD's prompt ensemble (spec §4, data from the official code): 9 normal and 10 abnormal states × 22 templates,
state-major order, category names used as the dataset folder names (underscores kept) unless asked otherwise."""
from __future__ import annotations

from typing import Optional

NORMAL_STATES = (
    "flawless {}", "perfect {}", "unblemished {}", "{} without flaw", "{} without defect", "{} without damage",
    "{} without scratch", "{} without crack", "{} without contamination",
)
ABNORMAL_STATES = (
    "damaged {}", "imperfect {}", "blemished {}", "broken {}", "{} with flaw", "{} with defect", "{} with damage",
    "{} with scratch", "{} with crack", "{} with contamination",
)
TEMPLATES = (  # WinCLIP's 22 templates in the official code's order
    "a cropped photo of the {}.", "a cropped photo of a {}.", "a close-up photo of a {}.", "a close-up photo of the {}.",
    "a bright photo of a {}.", "a bright photo of the {}.", "a dark photo of the {}.", "a dark photo of a {}.",
    "a jpeg corrupted photo of a {}.", "a jpeg corrupted photo of the {}.", "a blurry photo of the {}.",
    "a blurry photo of a {}.", "a photo of the {}.", "a photo of a {}.", "a photo of a large {}.",
    "a photo of the small {}.", "a photo of the large {}.", "a photo of a small {}.",
    "a photo of the {} for visual inspection.", "a photo of a {} for visual inspection.",
    "a photo of the {} for anomaly detection.", "a photo of a {} for anomaly detection.",
)

# VisA folder names as the official code feeds them to the prompts (unchanged); the readable spellings are offered
# by name_transform="readable" (not the paper's setting).
VISA_CATEGORIES = ("candle", "capsules", "cashew", "chewinggum", "fryum", "macaroni1", "macaroni2", "pcb1", "pcb2",
                   "pcb3", "pcb4", "pipe_fryum")
MVTEC_CATEGORIES = ("bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut", "pill", "screw",
                    "tile", "toothbrush", "transistor", "wood", "zipper")
READABLE_NAMES = {"chewinggum": "chewing gum", "pipe_fryum": "pipe fryum", "macaroni1": "macaroni", "macaroni2": "macaroni",
                  "pcb1": "printed circuit board", "pcb2": "printed circuit board", "pcb3": "printed circuit board",
                  "pcb4": "printed circuit board", "capsules": "capsules", "metal_nut": "metal nut"}
NAME_TRANSFORMS = (None, "underscore_to_space", "readable")


def prompt_name(class_name: str, name_transform: Optional[str] = None) -> str:
    """The object word put into the prompts: the folder name as is (paper), underscores to spaces, or a readable name."""
    if name_transform not in NAME_TRANSFORMS:
        raise ValueError(f"name_transform must be one of {NAME_TRANSFORMS}, got {name_transform!r}")
    if name_transform == "underscore_to_space":
        return class_name.replace("_", " ").strip()
    if name_transform == "readable":
        return READABLE_NAMES.get(class_name, class_name.replace("_", " ").strip())
    return class_name


def build_prompts(class_name: str, name_transform: Optional[str] = None) -> tuple[list[str], list[str]]:
    """(198 normal, 220 abnormal) sentences, state-major: for state in states: for template in templates."""
    o = prompt_name(class_name, name_transform)
    normal = [t.format(s.format(o)) for s in NORMAL_STATES for t in TEMPLATES]
    abnormal = [t.format(s.format(o)) for s in ABNORMAL_STATES for t in TEMPLATES]
    return normal, abnormal
