"""The docs cannot rot: generated reference pages match the code that generates them."""

from __future__ import annotations

import runpy
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


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
