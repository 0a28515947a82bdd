"""The documentation's examples run (issue 22).

Every fenced ```python block of README.md and docs/**/*.md is executed, page by page in one namespace (a page reads
like a notebook), in a fresh folder holding a small copy of the demo data at `anomalens-demo/data` (what
`anomalens demo` writes, fewer images). A block that cannot run here says so on the line before it:

    <!-- not-run: the reason -->            never executed; the reason is required
    <!-- test-settings: weights=None -->    executed with these settings forced into every `anomalens.create` call
                                            (real CLIP weights cannot be downloaded in CI; the page says so)

A ```bash block is executed only when marked `<!-- run -->`: each `anomalens ...` line is invoked in process
through the typer app. `test_every_example_is_run_or_marked` holds the rules; the per-page tests run the blocks.
"""
from __future__ import annotations

import ast
import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
MARKER = re.compile(r"^<!--\s*(not-run|run|test-settings)\s*(?::\s*(.*?))?\s*-->$")
FENCE = re.compile(r"^(\s*)```+\s*([\w+-]*)")


@dataclass
class Block:
    page: str
    line: int
    lang: str
    code: str
    marker: str = ""  # "", "not-run", "run", "test-settings"
    arg: str = ""
    problems: list = field(default_factory=list)

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"

    @property
    def runs(self) -> bool:
        if self.lang == "python":
            return self.marker != "not-run"
        return self.lang in ("bash", "sh", "console") and self.marker == "run"


def doc_pages() -> list[Path]:
    """README.md and every markdown source of the site."""
    return [ROOT / "README.md"] + sorted(p for p in DOCS.rglob("*.md") if "figures" not in p.parts)


def blocks_of(path: Path) -> list[Block]:
    """The fenced code blocks of one page with the marker comment on the last non-blank line before each."""
    lines = path.read_text(encoding="utf-8").splitlines()
    out, i, previous = [], 0, ""
    page = str(path.relative_to(ROOT))
    while i < len(lines):
        m = FENCE.match(lines[i])
        if m is None:
            if lines[i].strip():
                previous = lines[i].strip()
            i += 1
            continue
        indent, lang, start = m.group(1), m.group(2).lower(), i
        i += 1
        body = []
        while i < len(lines) and not re.match(rf"^{indent}```", lines[i]):
            body.append(lines[i][len(indent):])
            i += 1
        mk = MARKER.match(previous)
        block = Block(page, start + 1, lang, "\n".join(body) + "\n", mk.group(1) if mk else "", (mk.group(2) or "") if mk else "")
        if previous.startswith("<!--") and mk is None:
            block.problems.append(f"unknown marker {previous!r}")
        out.append(block)
        previous, i = "", i + 1
    return out


def all_blocks() -> list[Block]:
    return [b for p in doc_pages() for b in blocks_of(p)]


def test_every_example_is_run_or_marked():
    """Python blocks run unless marked not-run with a reason; markers are known and sit on blocks they fit."""
    blocks = all_blocks()
    problems = []
    for b in blocks:
        problems += [f"{b.where}: {p}" for p in b.problems]
        if b.marker == "not-run" and not b.arg.strip():
            problems.append(f"{b.where}: <!-- not-run --> needs a reason: <!-- not-run: why -->")
        if b.marker == "not-run" and b.lang != "python":
            problems.append(f"{b.where}: only python blocks are run by default; drop the not-run marker")
        if b.marker == "test-settings":
            if b.lang != "python":
                problems.append(f"{b.where}: test-settings applies to python blocks only")
            try:
                forced_settings(b.arg)
            except (SyntaxError, ValueError) as exc:
                problems.append(f"{b.where}: bad test-settings {b.arg!r}: {exc}")
        if b.marker == "run" and b.lang not in ("bash", "sh", "console"):
            problems.append(f"{b.where}: <!-- run --> marks shell blocks (python blocks run by default)")
        if b.marker == "run":
            for cmd in shell_commands(b.code):
                if cmd[0] != "anomalens":
                    problems.append(f"{b.where}: a run block may hold only anomalens commands, not {cmd[0]!r}")
        if b.lang == "python" and b.runs:
            try:
                compile(b.code, b.where, "exec")
            except SyntaxError as exc:
                problems.append(f"{b.where}: does not compile: {exc}")
    assert not problems, "\n".join(problems)
    assert sum(b.lang == "python" and b.runs for b in blocks) >= 20, "the guides lost their runnable examples"


def forced_settings(text: str) -> dict:
    """`weights=None, image_size=112` -> {'weights': None, 'image_size': 112} (literals only)."""
    call = ast.parse(f"f({text})", mode="eval").body
    if call.args:
        raise ValueError("settings must be key=value")
    return {k.arg: ast.literal_eval(k.value) for k in call.keywords}


def shell_commands(code: str) -> list[list[str]]:
    """Shell lines of a block as argument lists (comments dropped, `\\` continuations joined)."""
    text = re.sub(r"\\\n\s*", " ", code)
    return [shlex.split(line, comments=True) for line in text.splitlines() if shlex.split(line, comments=True)]


# ---------------------------------------------------------------------------------------------- running them

PAGES_TO_RUN = [p for p in doc_pages() if any(b.runs for b in blocks_of(p))]


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory) -> Path:
    """`anomalens-demo/data` as the demo writes it, smaller: 3 categories, 10 train, 2 good + 1 per defect in test."""
    from anomalens.data.synthetic import make_synthetic_dataset

    root = tmp_path_factory.mktemp("demo") / "anomalens-demo" / "data"
    make_synthetic_dataset(root, n_train=10, n_test_good=2, n_test_per_defect=1, seed=0)
    return root


def _run_shell(block: Block) -> None:
    from typer.testing import CliRunner

    from anomalens.cli.main import app

    for cmd in shell_commands(block.code):
        result = CliRunner().invoke(app, cmd[1:])
        assert result.exit_code == 0, f"{block.where}: `{shlex.join(cmd)}` exited {result.exit_code}:\n{result.output}"


def _run_python(block: Block, namespace: dict, monkeypatch) -> None:
    import anomalens
    from anomalens import registry

    original = registry.create
    forced = forced_settings(block.arg) if block.marker == "test-settings" else {}

    def create(name, **settings):
        return original(name, **{**settings, **forced})

    with monkeypatch.context() as m:
        if forced:
            m.setattr(registry, "create", create)
            m.setattr(anomalens, "create", create, raising=False)
        try:
            exec(compile(block.code, block.where, "exec"), namespace)
        except Exception as exc:
            raise AssertionError(f"{block.where}: the example raised {type(exc).__name__}: {exc}") from exc


@pytest.mark.parametrize("page", PAGES_TO_RUN, ids=[str(p.relative_to(ROOT)) for p in PAGES_TO_RUN])
def test_page_examples_run(page, demo_data, tmp_path, monkeypatch):
    """Run a page's runnable blocks in order, in a fresh folder beside the demo data."""
    (tmp_path / "anomalens-demo").symlink_to(demo_data.parent, target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ANOMALENS_PROGRESS", "0")
    namespace: dict = {"__name__": "__docs__"}
    for block in blocks_of(page):
        if not block.runs:
            continue
        if block.lang == "python":
            _run_python(block, namespace, monkeypatch)
        else:
            _run_shell(block)


def test_mkdocs_build_is_strict_and_clean(tmp_path):
    """`mkdocs build --strict` passes (only where the docs extra is installed; .ci/run builds it after the tests)."""
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    if os.environ.get("ANOMALENS_DOCS_BUILD", "") != "1":
        pytest.skip("set ANOMALENS_DOCS_BUILD=1 to build the site here (.ci/run builds it after the tests)")
    import subprocess
    import sys

    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), NO_MKDOCS_2_WARNING="1")
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")], cwd=ROOT,
                       env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_readme_is_short_and_keeps_the_two_setup_commands():
    """The README stays a front page (≤ 150 lines) and opens with the two commands exactly as CI runs them."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 150
    blocks = [b.code.strip() for b in blocks_of(ROOT / "README.md") if b.lang == "bash"]
    assert blocks[:2] == ['pip install -c constraints.txt -e ".[test]" && anomalens demo',
                          'pip install -c constraints.txt -e ".[test]" && pytest']
    assert 'pip install -c constraints.txt -e ".[test]" && pytest' in (ROOT / ".ci" / "run").read_text()


def test_every_docs_page_is_in_the_nav():
    """A page left out of mkdocs.yml's nav would be built but unreachable (the strict build also warns)."""
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    pages = [p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md") if "figures" not in p.parts]
    missing = [p for p in pages if f": {p}" not in nav]
    assert not missing, f"add to nav in mkdocs.yml: {missing}"
