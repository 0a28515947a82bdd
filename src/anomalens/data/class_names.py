"""The object word each prompt-based method puts in its prompts for a dataset category, per its paper's code.

- WinCLIP (spec winclip.md §3.1 / §4 "Class words"): the folder name with `_` as a space ("metal nut", "pipe fryum");
  whether digits were stripped for VisA (pcb1 → pcb) is unknown, so VisA names are kept apart from the underscore.
- CLIP-AD (spec clip-ad.md §2.2 / §4.4): the folder name verbatim ("metal_nut", "pipe_fryum", "pcb1").
- Any other method that takes a `class_name`: the WinCLIP rule (readable words).

`OVERRIDES[(method, dataset)]` maps a category to another word (the per-dataset override map winclip.md §4 asks
for); the specs give no entry today, so it is empty.
"""
from __future__ import annotations

#: methods whose official code uses the dataset folder name verbatim in the prompts
VERBATIM = frozenset({"clipad"})

#: (method, dataset) -> {category: word}; consulted before the method's rule
OVERRIDES: dict[tuple[str, str], dict[str, str]] = {}


def class_name(method: str, dataset: str, category: str) -> str:
    """The object word of `category` (a dataset folder name) in `method`'s paper prompts on `dataset`."""
    override = OVERRIDES.get((method, dataset), {})
    if category in override:
        return override[category]
    return category if method in VERBATIM else category.replace("_", " ")
