"""``promptlab``: what the shipped configs offer, without reading YAML.

    promptlab list                 # tasks, methods, models and experiments
    promptlab list tasks           # or: methods, models, experiments, searches, mixtures, arms

Each entry is a config name (what ``promptlab-train data=<name>`` etc. takes) and what the YAML's own opening
comment says it is. The configs are read as package data (``importlib.resources``), so this works from an
installed wheel as from the source tree.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from importlib.resources import files

CONF_PACKAGE = "promptlab.conf"


@dataclass(frozen=True)
class Kind:
    group: str  # the config group: the folder under conf/ and the override's key
    title: str


KINDS = {
    "tasks": Kind("data", "Tasks"),
    "methods": Kind("method", "Methods"),
    "models": Kind("model", "Models"),
    "experiments": Kind("experiment", "Experiments"),
    "searches": Kind("search", "Prompt searches"),
    "mixtures": Kind("mixture", "Instruction-tuning mixtures"),
    "arms": Kind("arm", "Comparison arms"),
}
DEFAULT_KINDS = ("tasks", "methods", "models", "experiments")  # what `promptlab list` shows
ALIASES = {**{k.rstrip("s") if not k.endswith("ches") else k[:-2]: k for k in KINDS},
           **{kind.group: name for name, kind in KINDS.items()}}  # task, data, method, search, ...
MAX_WIDTH = 120  # a longer description keeps the whole sentences that fill most of it, else is cut at a word: "…"
ABBREVIATIONS = ("al", "e.g", "i.e", "etc", "vs", "cf")  # a "." after these does not end a sentence
SENTENCE_END = re.compile(r"[.?!](?=\s|$)")


def sentence_ends(text: str) -> list[int]:
    """Where the sentences of ``text`` end (just past each ".", "?" or "!")."""
    return [m.end() for m in SENTENCE_END.finditer(text) if not text[: m.start()].endswith(ABBREVIATIONS)]


def description(yaml_text: str) -> str:
    """What a config is, from its opening comment: the first comment line (a ``# @package`` header skipped), and
    when its sentence runs on, the next comment lines up to one that ends a sentence; usage examples (indented
    comment lines) and whatever follows the opening comment are not read. Longer than ``MAX_WIDTH``: the whole sentences that
    fit (when they fill half of it), else cut at a word."""
    text = ""
    for raw in yaml_text.splitlines():
        body = raw[1:] if raw.startswith("#") else None
        if body is not None and body.strip().startswith("@package"):
            continue
        if body is None or not body.strip() or body.startswith("   "):  # the comment ends, or a usage example
            break
        text = f"{text} {body.strip()}".strip()
        if text.endswith((".", "?", "!")) and sentence_ends(text)[-1:] == [len(text)]:
            break
    text = text.removesuffix(":")
    if len(text) <= MAX_WIDTH:
        return text
    fits = [end for end in sentence_ends(text) if MAX_WIDTH // 2 <= end <= MAX_WIDTH]  # not just a short question
    return text[: fits[-1]] if fits else text[: MAX_WIDTH - 1].rsplit(" ", 1)[0].rstrip(",;:") + "…"


def entries(group: str) -> list[tuple[str, str]]:
    """(name, description) of every option of a config group, by name; ``_name.yaml`` files are defaults the
    options share, not options."""
    folder = files(CONF_PACKAGE).joinpath(group)
    found = [(p.name.removesuffix(".yaml"), description(p.read_text(encoding="utf-8"))) for p in folder.iterdir()
             if p.name.endswith(".yaml") and not p.name.startswith("_")]
    return sorted(found)


def render(kind_name: str) -> str:
    kind = KINDS[kind_name]
    rows = entries(kind.group)
    width = max((len(name) for name, _ in rows), default=0)
    lines = [f"{kind.title} ({kind.group}=<name>):"]
    lines += [f"  {name:<{width}}  {desc or '—'}" for name, desc in rows]
    return "\n".join(lines)


def cmd_list(args: argparse.Namespace) -> int:
    if args.kind is None:
        names = list(DEFAULT_KINDS)
    else:
        name = ALIASES.get(args.kind.lower(), args.kind.lower())
        if name not in KINDS:
            print(f"promptlab list: error: unknown kind {args.kind!r}; use one of {', '.join(KINDS)}",
                  file=sys.stderr)
            return 2
        names = [name]
    print("\n\n".join(render(n) for n in names))
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="promptlab", description="What promptlab's shipped configs offer. Runs: "
                                "promptlab-train, promptlab-eval, promptlab-report.")
    sub = p.add_subparsers(dest="command", required=True, metavar="command")
    ls = sub.add_parser("list", help="list the shipped tasks, methods, models, experiments, ...",
                        description="Each config's name and what its YAML says it is.")
    ls.add_argument("kind", nargs="?", help=f"one of {', '.join(KINDS)} (default: {', '.join(DEFAULT_KINDS)})")
    ls.set_defaults(func=cmd_list)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except BrokenPipeError:  # `promptlab list | head`
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
