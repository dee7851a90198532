"""Write ``docs/reference/config.md``: every key of every shipped config (``src/promptlab/conf/``), its default(s)
and what it does, read from the YAMLs' own comments. ``tests/test_docs.py`` fails when the page is out of date:
run ``python scripts/config_reference.py`` after changing a config.

Hand-written: a line scanner over the block-style YAML the configs use, because the YAML parsers drop comments.
"""

from __future__ import annotations

import re
import sys
from collections import defaultdict
from pathlib import Path

from pydantic import BaseModel

from promptlab.config import CONFIG_DIR, describe, nested_schema

OUT = Path(__file__).resolve().parents[1] / "docs" / "reference" / "config.md"
GROUPS = ("model", "data", "method", "search", "mixture", "trainer", "logger", "paths")  # what a run composes
OVERLAYS = ("experiment", "arm")  # @package _global_ files: they set other groups' keys
KEY = re.compile(r"^( *)([A-Za-z_][\w.]*):(?: +(.*))?$")


def split_comment(line: str) -> tuple[str, str]:
    """(code, comment): the comment starts at a ``#`` outside quotes that follows a space (or starts the line)."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1] == " "):
            return line[:i].rstrip(), line[i + 1:].strip()
    return line.rstrip(), ""


def scan(path: Path) -> list[tuple[str, str, str]]:
    """Each key of the file as (dotted key, value as written, comment: on its line, else the lines above)."""
    out, stack, above, opening = [], [], [], True  # the file's opening comment says what the file is, not a key
    for raw in path.read_text().splitlines():
        code, comment = split_comment(raw)
        if not code.strip():
            above = above + [comment] if comment and not comment.startswith("@package") else []
            continue
        m = KEY.match(code)
        if not m or code.lstrip().startswith("-"):
            above, opening = [], False
            continue
        indent, key, value = len(m.group(1)), m.group(2), (m.group(3) or "").strip()
        while stack and stack[-1][0] >= indent:
            stack.pop()
        dotted = ".".join([k for _, k in stack] + [key])
        stack.append((indent, key))
        if dotted != "defaults" and not dotted.startswith("defaults."):
            out.append((dotted, value, comment or ("" if opening else " ".join(above))))
        above, opening = [], False
    return out


def first_comment(path: Path) -> str:
    """The file's opening comment line (what it is), without the @package header."""
    for line in path.read_text().splitlines():
        if line.startswith("#") and "@package" not in line:
            return line.lstrip("# ").strip()
        if line.strip() and not line.startswith("#"):
            break
    return ""


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ") or "—"


def shown(values: list[str]) -> str:
    distinct = list(dict.fromkeys(v for v in values if v))
    text = ", ".join(f"`{v}`" for v in distinct[:3]) + (", …" if len(distinct) > 3 else "")
    return text or "(nested)"


def schema_fields(schema: type[BaseModel], prefix: str = "") -> dict[str, str]:
    """Each (dotted) key a schema declares, with what it takes ("a whole number >= 1")."""
    out = {}
    for name, info in schema.model_fields.items():
        out[f"{prefix}{name}"] = describe(info)
        inner = nested_schema(info)
        if inner is not None:
            out |= schema_fields(inner, f"{prefix}{name}.")
    return out


def typed_keys(group: str) -> dict[str, str]:
    """What each key of a typed group takes (method: every registered type's ``Config``; model, search: their
    schemas);
    several method types declaring a key differently are all listed."""
    if group == "model":
        from promptlab.models import ModelConfig

        return schema_fields(ModelConfig)
    if group == "search":
        from promptlab.search import SearchSpec

        return schema_fields(SearchSpec)
    if group != "method":
        return {}
    import yaml

    from promptlab.methods import registry

    shipped = sorted({(yaml.safe_load(p.read_text()) or {}).get("type") for p in (CONFIG_DIR / "method").glob("*.yaml")}
                     - {None})  # the types the shipped YAMLs use (a test may register others)
    takes: dict[str, list[str]] = defaultdict(list)
    for name in shipped:
        for key, text in schema_fields(registry()[name].Config).items():
            if text not in takes[key]:
                takes[key].append(text)
    return {k: "; ".join(v) for k, v in takes.items()}


def group_section(group: str) -> list[str]:
    files = sorted(p for p in (CONFIG_DIR / group).glob("*.yaml") if not p.stem.startswith("_"))
    shared = sorted((CONFIG_DIR / group).glob("_*.yaml"))
    rows: dict[str, dict] = defaultdict(lambda: {"values": [], "in": [], "doc": ""})
    for path in [*shared, *files]:
        for key, value, comment in scan(path):
            row = rows[key]
            row["values"].append(value)
            row["in"].append(path.stem)
            row["doc"] = row["doc"] or comment
    lines = [f"## `{group}=`", "", "| option | what it is |", "| --- | --- |"]
    lines += [f"| `{p.stem}` | {cell(first_comment(p))} |" for p in files]
    takes = typed_keys(group)
    if takes:
        lines += ["", "| key | set in | value(s) | takes | what it does |", "| --- | --- | --- | --- | --- |"]
    else:
        lines += ["", "| key | set in | value(s) | what it does |", "| --- | --- | --- | --- |"]
    for key, row in rows.items():
        where = ("every option" if set(row["in"]) >= {p.stem for p in files} else
                 ", ".join(f"{n} (shared)" if n.startswith("_") else n for n in dict.fromkeys(row["in"])))
        reader = ("the PEFT config class's field type" if key.startswith("peft.") else
                  "a list of values to try (tuning.py)" if key.startswith("space.") else "checked by its reader")
        typed = f" {cell(takes.get(key, reader))} |" if takes else ""
        lines.append(f"| `{group}.{key}` | {cell(where)} | {cell(shown(row['values']))} |{typed} {cell(row['doc'])} |")
    return [*lines, ""]


def render() -> str:
    lines = ["# Config reference", "",
             "Generated by `scripts/config_reference.py` from the shipped YAMLs (`src/promptlab/conf/`, with their "
             "comments); `tests/test_docs.py` fails when this page is out of date. Set any key on the command line "
             "(`promptlab-train method=lora method.lr=1e-3`); a `+key` that no YAML sets is refused, as are "
             "unknown `data.` keys and PEFT fields. The `method`, `model` and `search` groups are typed schemas "
             "(`takes`: pydantic models in `methods/`, `models.py` and `search/spec.py`, strict types and ranges, no key their type does not "
             "declare), checked before any model loads. Options whose name starts with `_` are shared defaults, not "
             "choices.", "", "## Top level (`train.yaml`)", "", "| key | default | what it does |",
             "| --- | --- | --- |"]
    lines += [f"| `{k}` | {cell(f'`{v}`' if v else '(nested)')} | {cell(c)} |" for k, v, c in scan(CONFIG_DIR / "train.yaml")
              if not k.startswith("hydra")]
    lines.append("")
    for group in GROUPS:
        lines += group_section(group)
    for group in OVERLAYS:
        lines += [f"## `{group}=`", "", "| option | what it is |", "| --- | --- |"]
        lines += [f"| `{p.stem}` | {cell(first_comment(p))} |" for p in sorted((CONFIG_DIR / group).glob("*.yaml"))]
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(render())
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
