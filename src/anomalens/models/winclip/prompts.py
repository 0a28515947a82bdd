"""WinCLIP's compositional prompt ensemble (paper Fig. 6; spec §4): 7 normal and 4 anomalous states × templates."""
from __future__ import annotations

NORMAL_STATES = ("{}", "flawless {}", "perfect {}", "unblemished {}", "{} without flaw", "{} without defect", "{} without damage")
ANOMALOUS_STATES = ("damaged {}", "{} with flaw", "{} with defect", "{} with damage")

TEMPLATES_PAPER22 = (
    "a cropped photo of the {}.", "a cropped photo of a {}.", "a close-up photo of a {}.", "a close-up photo of the {}.",
    "a bright photo of a {}.", "a bright photo of the {}.", "a dark photo of a {}.", "a dark photo of the {}.",
    "a jpeg corrupted photo of a {}.", "a jpeg corrupted photo of the {}.", "a blurry photo of the {}.",
    "a blurry photo of a {}.", "a photo of the {}.", "a photo of a {}.", "a photo of a small {}.",
    "a photo of the small {}.", "a photo of a large {}.", "a photo of the large {}.",
    "a photo of a {} for visual inspection.", "a photo of the {} for visual inspection.",
    "a photo of a {} for anomaly detection.", "a photo of the {} for anomaly detection.",
)
# anomalib / the reference re-implementation: two entries missing, one duplicated (parity option only)
TEMPLATES_ANOMALIB21 = tuple(t for t in TEMPLATES_PAPER22 if t not in ("a cropped photo of a {}.", "a jpeg corrupted photo of a {}."))
TEMPLATES_ANOMALIB21 = TEMPLATES_ANOMALIB21[:8] + ("a jpeg corrupted photo of the {}.",) + TEMPLATES_ANOMALIB21[8:]
TEMPLATE_SETS = {"paper22": TEMPLATES_PAPER22, "anomalib21": TEMPLATES_ANOMALIB21}


def object_word(class_name: str) -> str:
    """The dataset's class name as a word: `metal_nut` -> `metal nut`."""
    return class_name.replace("_", " ").strip()


def build_prompts(class_name: str, templates: str = "paper22", extra_anomalous: tuple = ()) -> tuple[list[str], list[str]]:
    """(normal prompts, anomalous prompts): every template × state.

    extra_anomalous: task-specific anomalous states (paper Table 7), either a phrase with a `{}` slot for the object
    ("{} with bad soldering", "burnt {}") or plain words, which become "{} with <words>".
    """
    if templates not in TEMPLATE_SETS:
        raise ValueError(f"templates must be one of {sorted(TEMPLATE_SETS)}, got {templates!r}")
    o = object_word(class_name)
    tpl = TEMPLATE_SETS[templates]
    anomalous_states = ANOMALOUS_STATES + tuple(w if "{}" in w else f"{{}} with {w}" for w in extra_anomalous)
    normal = [t.format(s.format(o)) for t in tpl for s in NORMAL_STATES]
    anomalous = [t.format(s.format(o)) for t in tpl for s in anomalous_states]
    return normal, anomalous
