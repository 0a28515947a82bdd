"""MkDocs hooks (mkdocs.yml `hooks:`): pages generated from the code at build time, never copied by hand.

* `reference/cli.md` is written from the typer app (`typer.main.get_command(anomalens.cli.main.app)`): every
  command, sub-command, argument and option with its type, default and help.
* a fenced block ```` ```settings <model> ```` holding `name: what it changes` lines becomes the table of that
  model's settings, their defaults read from the estimator's `__init__` (`anomalens.catalogue`, no torch import).
  A setting of the model without a line, or a line for a setting the model lacks, is a build warning (so
  `mkdocs build --strict` fails when a page falls behind the code).
* an image `![...](path.png)` whose file is absent (figures are made by `docs/make_figures.py`; the one from
  non-redistributable data is never committed) becomes a note saying how to produce it, so the build works
  without them.
"""
from __future__ import annotations

import html
import logging
import re
from pathlib import Path

log = logging.getLogger("mkdocs.plugins.anomalens")

DOCS = Path(__file__).resolve().parent
CLI_PAGE = "reference/cli.md"

# ------------------------------------------------------------------------------------------- CLI reference


def _cell(text: str) -> str:
    """Markdown table cell: one line, pipes escaped, angle brackets as entities."""
    return html.escape(" ".join(str(text).split()), quote=False).replace("|", "\\|")


def _param_row(param, ctx) -> str:
    """One table row. Duck-typed: typer >= 0.29 carries its own copy of click (`typer._click`)."""
    if param.param_type_name == "argument":
        name = f"`{param.name.upper()}`" + ("..." if param.nargs == -1 else "")
    else:
        name = " / ".join(f"`{n}`" for n in list(param.opts) + list(param.secondary_opts))
    if hasattr(param, "display_type"):  # typer >= 0.29
        kind = str(param.display_type(ctx)).strip("<>")
    else:  # typer on click
        kind = param.type.name.lower()
    if getattr(param, "is_flag", False) and not param.secondary_opts:
        kind = "flag"
    if getattr(param, "multiple", False) or param.nargs == -1:
        kind += ", repeatable"
    if param.required:
        shown = "required"
    else:
        default = param.get_default(ctx, call=False)
        if default is None or default == () or default == [] or callable(default) or kind == "flag":
            shown = ""
        elif isinstance(default, bool) and param.secondary_opts:
            shown = f"`{(param.opts if default else param.secondary_opts)[0]}`"
        else:
            shown = f"`{_cell(default)}`"
    return f"| {name} | {_cell(kind)} | {shown} | {_cell(getattr(param, 'help', None) or '')} |"


def _usage(cmd, ctx) -> str:
    usage = cmd.get_usage(ctx).strip()
    usage = re.sub(r"^Usage:\s*", "", usage)
    return re.sub(r"\{(\w+)\}", lambda m: m.group(1).upper(), " ".join(usage.split()))


def _command_md(cmd, path: list[str], parent_ctx=None) -> list[str]:
    ctx = type(parent_ctx)(cmd, info_name=path[-1], parent=parent_ctx) if parent_ctx is not None else None
    if ctx is None:
        try:
            from typer._click.core import Context  # typer >= 0.29 builds on its own copy of click
        except ImportError:
            from click import Context

        ctx = Context(cmd, info_name=path[-1])
    title = " ".join(path)
    level = "#" * min(len(path) + 1, 4)
    out = [f"{level} `{title}`" if len(path) > 1 else "## Global options", ""]
    if cmd.help:
        out += [cmd.help.strip(), ""]
    out += ["```text", _usage(cmd, ctx), "```", ""]
    params = [p for p in cmd.params if not getattr(p, "hidden", False)]
    out += ["| argument / option | type | default | what it does |", "|---|---|---|---|"]
    out += [_param_row(p, ctx) for p in params]
    out += ["| `--help` | flag | | show the help and exit |", ""]
    if hasattr(cmd, "list_commands"):
        for name in cmd.list_commands(ctx):
            sub = cmd.get_command(ctx, name)
            if sub is not None and not getattr(sub, "hidden", False):
                out += _command_md(sub, path + [name], ctx)
    return out


def cli_reference() -> str:
    """Markdown for every command of the `anomalens` CLI, walked from the click tree of the typer app."""
    import typer

    from anomalens.cli.main import app

    root = typer.main.get_command(app)
    head = [
        "# Command line reference",
        "",
        "Generated at build time from the typer app (`anomalens.cli.main`) by `docs/hooks.py`: every command,",
        "argument and option exactly as `anomalens COMMAND --help` shows them. Settings passed with",
        "`--set key=value` are each model's own; see [the model pages](../models/index.md) or `anomalens models NAME`.",
        "",
    ]
    return "\n".join(head + _command_md(root, ["anomalens"])) + "\n"


def on_files(files, config):
    """Add the generated CLI reference page."""
    from mkdocs.structure.files import File

    files.append(File.generated(config, CLI_PAGE, content=cli_reference()))
    return files


# ------------------------------------------------------------------------------------------- settings tables

SETTINGS_BLOCK = re.compile(r"^```settings[ \t]+(\w+)[ \t]*\n(.*?)^```[ \t]*$", re.M | re.S)


def generator_defaults() -> dict:
    """AnomalyDiffusion's settings: the fields of `GeneratorConfig` and their defaults, read from its source."""
    import ast

    import anomalens

    src = Path(anomalens.__file__).parent / "generation" / "config.py"
    tree = ast.parse(src.read_text(encoding="utf-8"))
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "GeneratorConfig")
    out = {}
    for node in cls.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            value = node.value
            if isinstance(value, ast.Call) and getattr(value.func, "id", "") == "field":  # field(default_factory=dict)
                factory = next((k.value for k in value.keywords if k.arg == "default_factory"), None)
                out[node.target.id] = {} if getattr(factory, "id", "") == "dict" else ast.unparse(value)
            else:
                out[node.target.id] = ast.literal_eval(value)
    return out


def model_defaults() -> dict[str, dict]:
    """Every documented model's settings and defaults, from the source (no torch import)."""
    from anomalens.catalogue import model_catalogue

    return {e.name: e.settings for e in model_catalogue()} | {"anomalydiffusion": generator_defaults()}


def settings_table(model: str, body: str, page: str) -> str:
    """Table `setting | default | what it changes` for one model; warns on missing / unknown settings."""
    entries = model_defaults()
    if model not in entries:
        log.warning("%s: settings block for unknown model %r (known: %s)", page, model, ", ".join(entries))
        return ""
    described: dict[str, str] = {}
    for line in body.splitlines():
        if not line.strip():
            continue
        m = re.match(r"\s*(\w+)\s*:\s*(.+)", line)
        if m is None:
            log.warning("%s: settings line is not 'name: description': %r", page, line)
            continue
        described[m.group(1)] = m.group(2).strip()
    defaults = entries[model]
    for name in described.keys() - defaults.keys():
        log.warning("%s: settings block describes %r, which %s does not have", page, name, model)
    for name in defaults.keys() - described.keys():
        log.warning("%s: %s setting %r is not described in the settings block", page, model, name)
    rows = ["| setting | default | what it changes |", "|---|---|---|"]
    for name, default in defaults.items():
        rows.append(f"| `{name}` | `{default!r}` | {described.get(name, '')} |")
    return "\n".join(rows) + "\n"


# ------------------------------------------------------------------------------------------- figures

IMAGE = re.compile(r"!\[([^\]]*)\]\(([^)\s]+\.(?:png|jpg|svg))\)(\{[^}]*\})?")


def _figure_or_note(match: re.Match, page_dir: Path) -> str:
    alt, target = match.group(1), match.group(2)
    if "://" in target:
        return match.group(0)
    if (page_dir / target).is_file():  # the picture, its alt text as a visible caption under it
        return f"{match.group(0)}\n\n*{alt}*" if alt else match.group(0)
    name = Path(target).name
    return (f'\n!!! note "Figure not built: {name}"\n'
            f"    *{alt}* — produce it with `python docs/make_figures.py` (from a real run; see "
            f"`docs/figures/README.md`).\n")


def on_page_markdown(markdown, page, config, files):
    """Expand settings blocks; replace absent figures by a note."""
    src = page.file.src_uri
    markdown = SETTINGS_BLOCK.sub(lambda m: settings_table(m.group(1), m.group(2), src), markdown)
    page_dir = (DOCS / src).parent
    return IMAGE.sub(lambda m: _figure_or_note(m, page_dir), markdown)
