"""``promptlab list``: every shipped option of a config group with what its YAML says it is."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import config_names, subprocess_env

from promptlab import cli


@pytest.mark.parametrize(("kind", "name", "words"), [
    ("tasks", "sst2", "GLUE SST-2: binary sentiment of movie-review phrases."),
    ("methods", "lora", "LoRA (Hu et al., 2021) with PEFT: low-rank updates"),
    ("models", "smollm2_135m", "SmolLM2-135M-Instruct, shipped as a GGUF"),
    ("experiments", "demo", "The README's main job: prompting and tuning on SST-2"),
])
def test_list_names_each_option_with_its_description(capsys, kind, name, words):
    assert cli.main(["list", kind]) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.split()[:1] == [name])
    assert words in line
    assert out.splitlines()[0] == f"{cli.KINDS[kind].title} ({cli.KINDS[kind].group}=<name>):"


@pytest.mark.parametrize("kind", list(cli.KINDS))
def test_every_shipped_option_is_listed_with_a_description(kind):
    group = cli.KINDS[kind].group
    listed = dict(cli.entries(group))
    assert sorted(listed) == config_names(group)  # every option; no _defaults.yaml
    for name, text in listed.items():
        assert text and "@package" not in text and not text.startswith("#"), name
        assert len(text) <= cli.MAX_WIDTH, name


def test_list_without_a_kind_shows_the_four_main_groups(capsys):
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    titles = [line for line in out.splitlines() if line and not line.startswith(" ")]
    assert titles == [f"{cli.KINDS[k].title} ({cli.KINDS[k].group}=<name>):" for k in cli.DEFAULT_KINDS]
    assert "_trained" not in out  # shared defaults, not an option


def test_singular_and_group_names_are_accepted(capsys):
    for kind in ("task", "data", "method", "search"):
        assert cli.main(["list", kind]) == 0
    assert "few_shot" in capsys.readouterr().out


def test_an_unknown_kind_is_one_line(capsys):
    assert cli.main(["list", "widgets"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.strip().count("\n") == 0
    assert "unknown kind 'widgets'" in captured.err and "tasks, methods, models, experiments" in captured.err


@pytest.mark.parametrize(("yaml", "expected"), [
    ("# One line.\nname: x\n", "One line."),
    ("# @package _global_\n# What it is.\n#   promptlab-train experiment=x\ndefaults: []\n", "What it is."),
    ("# A sentence that runs\n# on to here. And more.\n# Not this.\nname: x\n", "A sentence that runs on to here. And more."),
    ("# A task (Wei et al. 2022) that\n# ends here.\n", "A task (Wei et al. 2022) that ends here."),
    ("# Try this:\n#   promptlab-train method=x\n", "Try this"),
    ("name: x\n", ""),
])
def test_description_reads_the_opening_comment(yaml, expected):
    assert cli.description(yaml) == expected


def test_a_long_description_keeps_whole_sentences_or_is_cut_at_a_word():
    sentence = "A first sentence that is long enough to fill more than half of the width of a line, on its own."
    assert cli.description(f"# {sentence} Then a second one that does not fit in the width.\n") == sentence
    long = "# " + " ".join(["word"] * 60) + "\n"
    cut = cli.description(long)
    assert cut.endswith("word…") and len(cut) <= cli.MAX_WIDTH


def test_the_console_script_lists_tasks():
    script = shutil.which("promptlab", path=str(Path(sys.executable).parent))
    assert script, "the `promptlab` console script is not installed: pip install -e ."
    proc = subprocess.run([script, "list", "tasks"], env=subprocess_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert any(line.split()[:1] == ["sst2"] and "SST-2" in line for line in proc.stdout.splitlines())
