"""Hardlink (copy across filesystems) installed distributions from another environment into this interpreter's
site-packages, file by file from their RECORD, so that pip sees them as installed. .ci/run-min uses it for torch /
torchvision and their CUDA wheels (about 4.5 GB) when TORCH_FROM names a site-packages that already holds them;
without it those wheels come from PyPI. Usage: python link_dists.py SRC_SITE_PACKAGES NAME [NAME ...]
(a NAME ending in '*' is a prefix; the requirements of every linked distribution that match a NAME follow)."""
from __future__ import annotations

import os
import re
import shutil
import sys
import sysconfig
from importlib import metadata
from pathlib import Path


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def wanted(name: str, patterns: list[str]) -> bool:
    return any(name.startswith(p[:-1]) if p.endswith("*") else name == p for p in patterns)


def main(src: str, patterns: list[str]) -> None:
    patterns = [norm(p.rstrip("*")) + ("*" if p.endswith("*") else "") for p in patterns]
    dists = {norm(d.metadata["Name"]): d for d in metadata.distributions(path=[src])}
    todo = [n for n in dists if wanted(n, patterns)]
    dst = Path(sysconfig.get_paths()["purelib"])
    done: set[str] = set()
    while todo:
        name = todo.pop()
        if name in done or name not in dists:
            continue
        done.add(name)
        dist = dists[name]
        for req in dist.requires or []:
            dep = norm(re.split(r"[ ;<>=!~\[(]", req, maxsplit=1)[0])
            if wanted(dep, patterns) and dep not in done:
                todo.append(dep)
        n = 0
        for f in dist.files or []:
            rel = Path(str(f))
            if rel.parts and rel.parts[0] == "..":  # console scripts point at the other interpreter: skip
                continue
            s, d = Path(src) / rel, dst / rel
            if not s.is_file():
                continue
            d.parent.mkdir(parents=True, exist_ok=True)
            if d.exists():
                d.unlink()
            try:
                os.link(s, d)
            except OSError:
                shutil.copy2(s, d)
            n += 1
        print(f"linked {dist.metadata['Name']}=={dist.version} ({n} files)")


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2:])
