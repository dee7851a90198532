"""Write ``docs/reference/run-record.md``: every key of a run's ``result.json`` and ``predictions.jsonl``, read from the
record contract in ``src/promptlab/schema.py`` (the ``RunResult``, ``MethodInfo`` and ``Machine`` dataclasses,
``COST_KEYS``, ``PREDICTION_KEYS`` and the comments beside them). ``tests/test_docs.py`` fails when the page is out
of date: run ``python scripts/run_record_reference.py`` after changing the schema.

A field's text is its comment in ``schema.py`` (on its line, else the comment lines right above it); fields the
schema leaves uncommented take the text in ``FIELD_TEXT`` / ``COST_TEXT`` below. A new field with neither is listed
as undocumented: add a comment where it is declared.
"""

from __future__ import annotations

import ast
import dataclasses
import io
import sys
import tokenize
from pathlib import Path
from typing import get_args

from promptlab import schema

OUT = Path(__file__).resolve().parents[1] / "docs" / "reference" / "run-record.md"
SOURCE = Path(schema.__file__)
UNDOCUMENTED = "(undocumented: add a comment where `schema.py` declares it)"

# What the fields schema.py does not comment hold (written from tracking/record.py and run/execute.py).
FIELD_TEXT = {
    "run_id": "the run's id, `<date>-<time>-<method>-<dataset>-s<seed>-<random>`; a resumed run keeps it",
    "status": "`running`, then `completed`, `failed`, `interrupted` or `diverged` (see Status below)",
    "kind": "`train` (written by `promptlab-train`) or `eval` (`promptlab-eval` re-scoring a saved run)",
    "method": "the method YAML's name (`method=`), e.g. `prompt_tuning`",
    "model": "the model config's name (`model=`), e.g. `smollm2_135m`",
    "dataset": "the task's name (`data=`), or the mixture's name for an instruction-tuning run",
    "output_type": "`choice` or `generate` (the task's), `mixture` for an instruction-tuning run",
    "primary_metric": "the metric tables and figures rank by (`seen_mean` for a mixture)",
    "chance": "the primary metric's value for uniform guessing (choice tasks); null for generation",
    "seed": "the run's seed (`seed=`); every random stream derives from it (see `provenance.seeds`)",
    "k_shot": "training examples per class (`data.k_shot`), or null",
    "train_size": "training examples in all (`data.train_size`), or null",
    "num_demos": "demonstrations shown per query (few-shot methods; 0 otherwise)",
    "eval_split": "the reported split (the task's `eval_split`; `per task` for a mixture)",
    "config_hash": "a hash of the resolved config without its non-semantic sections (`paths`, `logger`, `hydra`, ...): "
                   "runs with the same hash computed the same thing; null when the config does not resolve",
    "git_commit": "promptlab's git commit, when it runs from a checkout",
    "versions": "versions of promptlab, torch, transformers, peft, lightning and python",
    "machine": "where the timings were measured (the `machine` table below)",
    "started_at": "when the run started (ISO 8601, UTC)",
    "schema_version": f"the record's schema version (now {schema.SCHEMA_VERSION}); the report reads older records too",
    "metrics": "every metric on the reported split, as fractions: the primary metric under the headline readout, "
               "`<metric>@<readout>` for the others (`accuracy@per_char`, `accuracy@batch`, ...), "
               "`<task>/<metric>`, `seen_mean` and `heldout_mean` for a mixture",
    "costs": "what the run cost, a flat name -> number map (the `costs` table below)",
    "num_train_examples": "training examples the run drew (its budget after the dev carve-out)",
    "finished_at": "when the run ended (ISO 8601, UTC); null while running",
    "error": "why it did not complete: `<Exception>: <message>`, `Interrupted: SIGTERM during <phase>` or "
             "`Diverged: ...`",
    "traceback": "the Python traceback of a `failed` run",
    "host": "the host name of the process that wrote the record",
    "splits": "how each split was made: `train` (split, rows), `dev` (rows, where they came from), `eval` (split, "
              "rows, of how many), `dropped_overlaps` (training and dev rows dropped for repeating an eval or dev row)",
}
METHOD_INFO_TEXT = {"trains": "whether the method trains weights (prompting methods do not)"}
MACHINE_TEXT = {
    "hostname": "the machine's host name",
    "cpu": "the CPU model",
    "cores": "CPU cores the process may use",
    "torch_threads": "torch's intra-op threads during the run",
    "gpu": "the GPU's name, or null",
    "load_end": "os.getloadavg() at the end",
}
COST_TEXT = {
    "trainable_params": "parameters that train (0 for prompting)",
    "total_params": "parameters of the backbone plus the method's own",
    "trainable_fraction": "trainable_params / total_params",
    "model_load_seconds": "loading the backbone (and building the method around it)",
    "train_seconds": "training, wall clock (dev checks during training included)",
    "train_steps": "optimiser steps taken",
    "train_examples_seen": "training examples processed, over all steps (and all ranks)",
    "train_tokens_seen": "training tokens processed, over all steps",
    "train_examples_per_second": "train_examples_seen / train_seconds",
    "eval_seconds": "scoring the reported split",
    "eval_examples": "rows of the reported split scored",
    "eval_examples_per_second": "eval_examples / eval_seconds",
    "generated_tokens": "tokens the model wrote on the reported split (generation and chain-of-thought)",
    "generation_seconds": "time spent writing them",
    "generated_tokens_per_second": "generated_tokens / generation_seconds",
    "peak_rss_mb": "peak resident memory of the process during the run, MB",
    "peak_rss_reset_per_run": "true when the peak could be reset at the run's start (Linux); false: the process "
                              "lifetime's peak, an upper bound when one process runs several jobs",
    "peak_gpu_mb": "peak GPU memory, MB (null without a GPU)",
    "checkpoint_bytes": "bytes stored per task in `checkpoint/` (0 for prompting)",
    "truncated_prompts": "prompts shortened to fit `max_prompt_tokens`",
}


def comments(source: str) -> dict[int, str]:
    """Line number -> the text of the comment on that line."""
    out = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            out[tok.start[0]] = tok.string.lstrip("#").strip()
    return out


def comment_for(line: int, notes: dict[int, str], lines: list[str]) -> str:
    """The comment on ``line``, else the comment lines directly above it (a block of whole-line comments)."""
    if line in notes and lines[line - 1].lstrip()[:1] != "#":
        return notes[line]
    above, i = [], line - 1
    while i >= 1 and lines[i - 1].lstrip().startswith("#"):
        above.insert(0, notes[i])
        i -= 1
    return " ".join(above)


def class_fields(tree: ast.Module, name: str) -> dict[str, int]:
    """Field name -> line of its declaration in the dataclass ``name``."""
    node = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name)
    return {s.target.id: s.lineno for s in node.body if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)}


def assigned_at(tree: ast.Module, name: str) -> ast.Assign:
    return next(n for n in tree.body if isinstance(n, ast.Assign | ast.AnnAssign)
                and any(isinstance(t, ast.Name) and t.id == name
                        for t in (n.targets if isinstance(n, ast.Assign) else [n.target])))


def cell(text: str) -> str:
    """``text`` as one table cell: pipes escaped, and ``<`` / ``>`` outside code spans too (``<task>`` would be
    read as an HTML tag and vanish)."""
    parts = text.replace("|", "\\|").replace("\n", " ").split("`")
    parts[::2] = [p.replace("<", "&lt;").replace(">", "&gt;") for p in parts[::2]]
    return "`".join(parts) or "—"


def default_of(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        return "`null`" if f.default is None else f"`{f.default!r}`".replace("'", '"')
    if f.default_factory is not dataclasses.MISSING:
        return f"`{f.default_factory()!r}`"
    return "always set"


def field_table(cls: type, tree: ast.Module, notes: dict[int, str], lines: list[str], text: dict[str, str],
                prefix: str = "") -> list[str]:
    where = class_fields(tree, cls.__name__)
    out = ["| key | type | default | what it holds |", "| --- | --- | --- | --- |"]
    for f in dataclasses.fields(cls):
        doc = comment_for(where[f.name], notes, lines) or text.get(f.name) or UNDOCUMENTED
        # the type as plain text: a table's escaped pipe shows its backslash inside a code span
        out.append(f"| `{prefix}{f.name}` | {cell(str(f.type))} | {default_of(f)} | {cell(doc)} |")
    return out


def cost_rows(tree: ast.Module, notes: dict[int, str], lines: list[str]) -> list[str]:
    """One row per key of an uncommented line (``COST_TEXT``); one row for the keys a comment covers: those on its
    line, or every line after a block of whole-line comments up to the next comment."""
    node = assigned_at(tree, "COST_KEYS")
    by_line: dict[int, list[str]] = {}
    for elt in node.value.elts:
        by_line.setdefault(elt.lineno, []).append(elt.value)
    rows: list[tuple[list[str], str]] = []
    block = None  # the rows a comment block above covers
    for line, keys in by_line.items():
        if line in notes:  # a comment on the line covers its keys
            rows.append((keys, notes[line]))
            block = None
        elif lines[line - 2].lstrip().startswith("#"):  # a block of comment lines right above starts a group
            block = (list(keys), comment_for(line, notes, lines))
            rows.append(block)
        elif block is not None:
            block[0].extend(keys)
        else:
            rows += [([k], COST_TEXT.get(k, UNDOCUMENTED)) for k in keys]
    out = ["| key | what it measures |", "| --- | --- |"]
    out += [f"| {', '.join(f'`costs.{k}`' for k in keys)} | {cell(text)} |" for keys, text in rows]
    return out


def prediction_rows(tree: ast.Module, notes: dict[int, str], lines: list[str]) -> list[str]:
    node = assigned_at(tree, "PREDICTION_KEYS")
    above, i = [], node.lineno - 1
    while i >= 1 and lines[i - 1].lstrip().startswith("#"):
        above.insert(0, lines[i - 1].lstrip()[1:].rstrip().removeprefix(" "))
        i -= 1
    out = ["From the comment above `PREDICTION_KEYS`:", "", "```text", *above, "```", "",
           "| output type | keys every row has |", "| --- | --- |"]
    out += [f"| `{kind}` | {', '.join(f'`{k}`' for k in keys)} |" for kind, keys in schema.PREDICTION_KEYS.items()]
    return out


def render() -> str:
    source = SOURCE.read_text()
    tree, notes, lines = ast.parse(source), comments(source), source.splitlines()
    status_doc = comment_for(assigned_at(tree, "Status").lineno, notes, lines)
    conventions = schema.__doc__.split("Conventions, in one place:", 1)[1].strip()
    out = [
        "# Run record reference: `result.json` and `predictions.jsonl`", "",
        "Generated by `scripts/run_record_reference.py` from the record contract, `src/promptlab/schema.py` (its "
        "dataclasses, key lists and their comments); `tests/test_docs.py` fails when this page is out of date. "
        "`tracking/record.py` writes the record (only `RunResult`'s fields: a new key is declared in the schema "
        "first), `report/` reads it. Every file is strict JSON: a non-finite number is written as `null`. What "
        "else a run directory holds: [What a run leaves behind](../guides/running.md#what-a-run-leaves-behind).", "",
        f"Schema version: **{schema.SCHEMA_VERSION}**. Conventions:", "",
        conventions.replace("\n  ", " "), "",
        "## Status", "",
        "| `status` | means |", "| --- | --- |",
    ]
    meaning = {
        "running": "the run is under way (or its process died: see `heartbeat_at`)",
        "completed": "finished; its metrics are a result",
        "failed": "stopped by an error (`error`, `traceback`)",
        "interrupted": "stopped by SIGINT/SIGTERM; running the same command again resumes it",
        "diverged": "training or scoring went non-finite (`diverged_at_step`); never ranked as a result",
    }
    out += [f"| `{s}` | {meaning.get(s, UNDOCUMENTED)}{' (final: not resumed)' if s in schema.FINAL else ''} |"
            for s in get_args(schema.Status)]
    out += ["", cell(status_doc), "",
            "## `result.json`", "", "Top-level keys, in the order the record writes them.", ""]
    out += field_table(schema.RunResult, tree, notes, lines, FIELD_TEXT)
    out += ["", "## `method_info`", "", cell(schema.MethodInfo.__doc__.strip()), ""]
    out += field_table(schema.MethodInfo, tree, notes, lines, METHOD_INFO_TEXT, "method_info.")
    out += ["", "## `machine`", "", cell(schema.Machine.__doc__.strip()), ""]
    out += field_table(schema.Machine, tree, notes, lines, MACHINE_TEXT, "machine.")
    out += ["", "## `costs`", "",
            "All optional: a method that does not train, search or generate records zeros, not gaps. Seconds are "
            "wall clock.", ""]
    out += cost_rows(tree, notes, lines)
    out += ["", "## `predictions.jsonl` and `dev_predictions.jsonl`", ""]
    out += prediction_rows(tree, notes, lines)
    return "\n".join(out) + "\n"


def main() -> int:
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(render())
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
