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
    #: draw(train split, shots, seed) -> the k references of fit "shots"; None = `ImageDataset.sample(shots, seed)`
    draw: Optional[Callable[[Any, int, int], Any]] = None

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


def sorted_block_draw(train, shots: int, seed: int):
    """The k references of a deterministic few-shot protocol: the train files sorted by file name, block
    [seed·k, (seed+1)·k) (AnomalyDINO's `sorted(os.listdir(train/good))[s·k:(s+1)·k]`, detection.py:72)."""
    import os

    from ..errors import DataError

    order = sorted(range(len(train)), key=lambda i: os.path.basename(train.records[i].path))
    block = order[seed * shots : (seed + 1) * shots]
    if len(block) < shots:
        raise DataError(f"{train.source}: {len(train)} train images hold no block {seed} of {shots} "
                        f"(images {seed * shots}..{(seed + 1) * shots - 1} of the sorted names); use a lower seed")
    return train.subset(block)


def _anomalydino_settings(preprocess: str):
    def settings(dataset: str, category: str, shots: int) -> dict:
        from ..models.anomalydino import official_masking, official_rotation

        return {"masking": official_masking(dataset, category), "rotation": official_rotation(dataset, category, preprocess)}

    return settings


register_preset(MethodPreset(
    "anomalydino", "anomalydino", "shots",
    settings=_anomalydino_settings("agnostic"),
    paper_setting=lambda settings, shots: f"agnostic-{shots}shot",
    description="AnomalyDINO k-shot, the README's `agnostic` preset: every category's references rotated (8 angles), "
                "test images masked per the official category table; references = the sorted train files "
                "[seed·k, (seed+1)·k) (run --seeds 0,1,2 as the official evaluation)",
    default_shots=(1, 2, 4, 8, 16),
    min_shots=1,
    draw=sorted_block_draw,
))
register_preset(MethodPreset(
    "anomalydino-informed", "anomalydino", "shots",
    settings=_anomalydino_settings("informed"),
    paper_setting=lambda settings, shots: f"informed-{shots}shot",
    description="AnomalyDINO k-shot, the `informed` preset: rotation for MVTec AD hazelnut and screw only, masking per "
                "the official table; the same deterministic reference blocks",
    default_shots=(1, 2, 4, 8, 16),
    min_shots=1,
    draw=sorted_block_draw,
))
