"""The docs cannot rot: generated reference pages match the code that generates them, the site builds with
``mkdocs build --strict`` (no broken link, anchor or nav entry), and every shell command of the docs that uses a
tiny model runs."""

from __future__ import annotations

import os
import re
import runpy
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import ORIGINAL_PROMPTLAB_DATA

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def test_config_reference_is_current():
    generator = runpy.run_path(str(ROOT / "scripts" / "config_reference.py"))
    page = ROOT / "docs" / "reference" / "config.md"
    assert page.read_text() == generator["render"](), "run: python scripts/config_reference.py"


def test_config_reference_lists_every_option_and_key():
    generator = runpy.run_path(str(ROOT / "scripts" / "config_reference.py"))
    text = generator["render"]()
    for option in ("self_consistency", "lora", "gsm8k", "smollm2_135m", "demo"):
        assert f"| `{option}` |" in text
    for key in ("method.sampling.samples", "method.peft.r", "data.filters", "eval_batch_size"):
        assert f"| `{key}` |" in text
    scan = generator["scan"]
    keys = {k: (v, c) for k, v, c in scan(ROOT / "src" / "promptlab" / "conf" / "method" / "prompt_tuning.yaml")}
    assert keys["peft.num_virtual_tokens"][0] == "20" and keys["lr"][1].startswith("soft prompts need")
    assert keys["peft.prompt_tuning_init"][1].startswith("TEXT")  # a comment after a value with no quotes


# ------------------------------------------------------------------------------------ run record reference


def test_run_record_reference_is_current():
    generator = runpy.run_path(str(ROOT / "scripts" / "run_record_reference.py"))
    page = ROOT / "docs" / "reference" / "run-record.md"
    assert page.read_text() == generator["render"](), "run: python scripts/run_record_reference.py"


def test_run_record_reference_lists_every_key():
    from dataclasses import fields

    from promptlab import schema

    text = runpy.run_path(str(ROOT / "scripts" / "run_record_reference.py"))["render"]()
    for f in fields(schema.RunResult):
        assert f"| `{f.name}` |" in text
    for cls, prefix in ((schema.MethodInfo, "method_info."), (schema.Machine, "machine.")):
        assert all(f"| `{prefix}{f.name}` |" in text for f in fields(cls))
    assert all(f"`costs.{key}`" in text for key in schema.COST_KEYS)
    assert all(f"`{key}`" in text for keys in schema.PREDICTION_KEYS.values() for key in keys)


# --------------------------------------------------------------------------------------- the other pages


def test_cli_reference_lists_every_option(capsys):
    from promptlab.eval import USAGE
    from promptlab.report.cli import main as report_main

    page = (DOCS / "reference" / "cli.md").read_text()
    with pytest.raises(SystemExit):
        report_main(["--help"])
    usage = capsys.readouterr().out
    options = set(re.findall(r"(?<![\w-])--?[a-z][\w-]*", usage)) | {"runs_dir"}
    assert options >= {"--out", "--wandb", "--bootstrap", "--seed", "-h", "--help"}, usage
    missing = sorted(o for o in options if f"`{o}" not in page)
    assert not missing, f"promptlab-report options missing from docs/reference/cli.md: {missing}"
    assert USAGE in page, "promptlab-eval's usage line changed: update docs/reference/cli.md"


def test_readme_links_resolve():
    """README.md is outside the site, so mkdocs does not check its links: every relative one must exist."""
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", (ROOT / "README.md").read_text())
    relative = [link for link in links if "://" not in link]
    assert relative and all((ROOT / link).exists() for link in relative), \
        [link for link in relative if not (ROOT / link).exists()]


def test_site_builds_strictly(tmp_path):
    """A broken link or anchor, a nav entry without its page or a page missing from the nav fails the build."""
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"),
                           "-d", str(tmp_path / "site")], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (tmp_path / "site" / "guides" / "running" / "index.html").is_file()
    assert (tmp_path / "site" / "reference" / "run-record" / "index.html").is_file()


# ----------------------------------------------------------------------------- the docs' commands, run

TINY = "model=tiny_"  # a bash block with a command that contains this is run, every command of it, in order
FENCE = re.compile(r"^\s*```(\w*)\s*$")
HEREDOC = re.compile(r"<<-?\s*(['\"]?)(\w+)\1")


@dataclass(frozen=True)
class Command:
    page: str  # relative to docs/
    line: int  # the command's first line in the page
    block: int  # the line of its block's opening fence
    text: str  # as written: continuation lines and here-documents included

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"


def split_commands(lines: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """A bash block's commands: a line, plus the lines a trailing backslash continues it with or a here-document
    it opens; blank lines and whole-line comments are not commands."""
    out, i = [], 0
    while i < len(lines):
        start, text = lines[i]
        i += 1
        if not text.strip() or text.lstrip().startswith("#"):
            continue
        parts = [text]
        while parts[-1].endswith("\\") and i < len(lines):
            parts.append(lines[i][1])
            i += 1
        doc = HEREDOC.search(parts[-1])
        if doc:
            while i < len(lines):
                parts.append(lines[i][1])
                i += 1
                if parts[-1].strip() == doc.group(2):
                    break
        out.append((start, "\n".join(parts)))
    return out


def bash_blocks(path: Path) -> list[tuple[int, list[tuple[int, str]]]]:
    """Each ```bash block of a Markdown page: (fence line, [(line, text), ...])."""
    blocks, current = [], None
    for n, text in enumerate(path.read_text().splitlines(), 1):
        fence = FENCE.match(text)
        if current is None and fence and fence.group(1) in ("bash", "sh", "shell"):
            current = (n, [])
        elif current is not None and fence and not fence.group(1):
            blocks.append(current)
            current = None
        elif current is not None:
            current[1].append((n, text))
    return blocks


def doc_pages() -> list[Path]:
    return sorted(p for p in DOCS.rglob("*.md") if "measurements" not in p.relative_to(DOCS).parts)


def docs_commands() -> list[Command]:
    """Every command of every bash block (outside docs/measurements/) that has a tiny-model command."""
    out = []
    for page in doc_pages():
        for fence, lines in bash_blocks(page):
            commands = split_commands(lines)
            if any(TINY in text for _, text in commands):
                out += [Command(str(page.relative_to(DOCS)), n, fence, text) for n, text in commands]
    return out


COMMANDS = docs_commands()


def test_docs_show_a_tested_command_for_each_step():
    """The guides keep a tiny-model example of each step a user takes, and every one of them runs below."""
    texts = [c.text for c in COMMANDS]
    wanted = {
        "a zero-shot run": lambda t: t.startswith("promptlab-train") and "method=" not in t,
        "a few-shot prompt search": lambda t: "method=few_shot" in t and "search=" in t,
        "a PEFT run": lambda t: "method=prompt_tuning" in t or "method=lora" in t,
        "a sweep over trials": lambda t: t.startswith("promptlab-train -m") and "trial=" in t,
        "the report": lambda t: t.startswith("promptlab-report"),
        "promptlab-eval of a saved run": lambda t: t.startswith("promptlab-eval run="),
        "a generation task": lambda t: "data=gsm8k" in t,
        "an image task": lambda t: "data=colours" in t,
        "a task of your own": lambda t: "--config-dir" in t,
    }
    missing = [what for what, found in wanted.items() if not any(found(t) for t in texts)]
    assert not missing, f"no tested docs command shows: {missing}"


def test_tested_blocks_run_only_tiny_models():
    """A block that is run must not start a real model: every promptlab-train in it names a tiny one."""
    real = [c.id for c in COMMANDS if c.text.startswith("promptlab-train") and TINY not in c.text]
    assert not real, f"these commands would run a real model in the tests: {real}"


class Runner:
    """Runs the docs' commands, each block in a directory of its own; a command runs the earlier commands of its
    block first, if they have not run (so one command can be selected alone)."""

    def __init__(self, root: Path):
        self.root = root
        self.results: dict[Command, subprocess.CompletedProcess] = {}
        bin_dir = str(Path(sys.executable).parent)
        self.env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
                    "WANDB_MODE": "offline", "PROMPTLAB_CACHE": str(root / "cache"),
                    "PROMPTLAB_RUNS": str(root / "runs"), "NO_MKDOCS_2_WARNING": "1"}
        if ORIGINAL_PROMPTLAB_DATA:
            self.env["PROMPTLAB_DATA"] = ORIGINAL_PROMPTLAB_DATA

    def cwd(self, c: Command) -> Path:
        path = self.root / f"{c.page.replace('/', '_').removesuffix('.md')}_{c.block}"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def run(self, c: Command) -> subprocess.CompletedProcess:
        for before in COMMANDS:
            if before.page == c.page and before.block == c.block and before.line < c.line:
                if before not in self.results:
                    self.run(before)
                done = self.results[before]
                assert done.returncode == 0, f"{before.id} failed first:\n{done.stderr[-3000:]}"
        if c not in self.results:
            self.results[c] = subprocess.run(["bash", "-c", c.text], cwd=self.cwd(c), env=self.env,
                                             stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600)
        return self.results[c]


@pytest.fixture(scope="module")
def runner(tmp_path_factory) -> Runner:
    return Runner(tmp_path_factory.mktemp("docs-commands"))


def needs_data(c: Command) -> bool:
    """The block trains on the shipped tasks' data (a command without a data root of its own)."""
    block = [b for b in COMMANDS if b.page == c.page and b.block == c.block]
    return any(b.text.startswith("promptlab-train") and "paths.data_root=" not in b.text for b in block)


@pytest.mark.parametrize("command", COMMANDS, ids=[c.id for c in COMMANDS])
def test_docs_command_runs(command: Command, runner: Runner):
    if needs_data(command) and not ORIGINAL_PROMPTLAB_DATA:
        pytest.skip("PROMPTLAB_DATA is unset: point it at the offline copies of the tasks (sst2/, rte/, gsm8k/)")
    start = time.perf_counter()
    proc = runner.run(command)
    assert proc.returncode == 0, (f"docs/{command.id} failed (exit {proc.returncode}, "
                                  f"{time.perf_counter() - start:.1f} s):\n{command.text}\n{proc.stderr[-3000:]}")
