"""Each method in its paper setting, as data: which model, which settings per category, how it is fitted, how its
paper numbers are keyed, and an optional set-level post-processing step used in evaluation only.

A new method is one `register_preset(MethodPreset(...))`; the runner, summary and report need no change.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np

from ..data.class_names import class_name

#: fit modes: "train" = all normal train images; "shots" = k seeded normals (k from --shots, 0 = zero-shot);
#: "none" = zero-shot, the test set is scored as it is (transductive methods see the whole category at once)
FIT_MODES = ("train", "shots", "none")


@dataclass(frozen=True)
class MethodPreset:
    """A method's paper setting.

    settings(dataset, category, shots) -> model settings of the paper run (user `--set` values are applied on top).
    paper_setting(settings, shots) -> the `setting` key of its rows in paper_numbers.csv.
    postprocess(model, prediction) -> replacement image scores for the paper's metrics, or None to keep the model's
    own scores; unset (None), `anomalens.evaluate` uses the model's `evaluation_scores` hook when it has one (CLIP-AD's
    per-category min–max sum). Either way the raw scores' image metrics are kept as extra columns (`image_auroc_raw`, ...).
    """

    name: str
    model: str
    fit: str
    settings: Callable[[str, str, int], dict]
    paper_setting: Callable[[dict, int], str]
    postprocess: Optional[Callable[[Any, Any], Optional[np.ndarray]]] = None
    description: str = ""
    default_shots: tuple = field(default=(0,))
    min_shots: int = 0  # 1 for methods that cannot run zero-shot (PatchCore's low-shot table)

    def __post_init__(self):
        if self.fit not in FIT_MODES:
            raise ValueError(f"fit must be one of {FIT_MODES}, got {self.fit!r}")


PRESETS: dict[str, MethodPreset] = {}


def register_preset(preset: MethodPreset) -> MethodPreset:
    """Add (or replace) a method preset under its name."""
    PRESETS[preset.name] = preset
    return preset


def get_preset(name: str) -> MethodPreset:
    """The preset of a benchmark method, with a clear error listing the known ones."""
    from ..errors import AnomalensError

    if name not in PRESETS:
        raise AnomalensError(f"no benchmark preset for method {name!r}; known: {', '.join(sorted(PRESETS))}")
    return PRESETS[name]


def _patchcore_setting(settings: dict, shots: int) -> str:
    ratio = float(settings.get("coreset_ratio", 0.1))
    return {0.25: "coreset25", 0.1: "coreset10", 0.01: "coreset1"}.get(round(ratio, 4), f"coreset{ratio:g}")


register_preset(MethodPreset(
    "patchcore", "patchcore", "train",
    settings=lambda dataset, category, shots: {},  # the registry defaults are the paper's: WRN-50, 224 px, 10 % coreset
    paper_setting=_patchcore_setting,
    description="PatchCore, full-shot: fit on every train/good image of the category (paper Tables 1-3)",
))
register_preset(MethodPreset(
    "patchcore-fewshot", "patchcore", "shots",
    settings=lambda dataset, category, shots: {},
    paper_setting=lambda settings, shots: f"{_patchcore_setting(settings, shots)}-{shots}shot",
    description="PatchCore low-shot: fit on k seeded normal images per category, full test set (paper Table S5; "
                "the paper gives MVTec AD means only, over draws it does not state: run several --seed values)",
    default_shots=(1, 2, 5, 10, 16, 20, 50),
    min_shots=1,
))
register_preset(MethodPreset(
    "winclip", "winclip", "shots",
    settings=lambda dataset, category, shots: {"class_name": class_name("winclip", dataset, category), "k_shot": shots},
    paper_setting=lambda settings, shots: f"{shots}shot",
    description="WinCLIP zero-shot (k=0) and WinCLIP+ k-shot with seeded reference draws (paper Tables 10-21)",
    default_shots=(0,),
))
register_preset(MethodPreset(
    "musc", "musc", "none",
    settings=lambda dataset, category, shots: {},  # RsCIN windows follow the dataset (VisA: 1, 8, 9) inside the model
    paper_setting=lambda settings, shots: "default",
    description="MuSc zero-shot: the whole test set of a category scored as one set (s = 1)",
))
register_preset(MethodPreset(
    "clipad", "clipad", "none",
    settings=lambda dataset, category, shots: {"variant": "sdp", "class_name": class_name("clipad", dataset, category),
                                               "dataset": dataset},
    paper_setting=lambda settings, shots: str(settings.get("variant", "sdp")),  # image score: the model's evaluation hook
    description="CLIP-AD SDP zero-shot; image score = per-category min-max sum of p_abn and map_max (official metrics)",
))
