"""Per-category class words for the CLIP prompts of each method's paper run.

TEMPORARY, benchmark-local: a shared mapping (`anomalens.data.class_names`) may land on main later; when it does,
replace `class_name` by it. Sources: winclip.md §4 "Class words" (MVTec/VisA folder names with underscores as
spaces: "metal nut", "pipe fryum"); clip-ad.md §4.4 (folder names used verbatim: "metal_nut", "pipe_fryum").
"""
from __future__ import annotations

#: methods whose official code uses the dataset folder name verbatim in the prompts
VERBATIM = frozenset({"clipad"})


def class_name(method: str, dataset: str, category: str) -> str:
    """The object word of `category` in `method`'s paper prompts."""
    return category if method in VERBATIM else category.replace("_", " ")
