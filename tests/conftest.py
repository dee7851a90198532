"""Shared fixtures: an isolated environment (no network, nothing written to $HOME), tiny JSONL tasks built
in tmp_path, Hydra composition the lightning-hydra-template way, and the tiny random backbone."""

from __future__ import annotations

# The environment must be fixed before anything imports huggingface_hub / datasets / wandb, which read
# some of these variables once, at import time. conftest is imported before any test module.
import atexit
import os
import shutil
import tempfile

_SESSION_TMP = tempfile.mkdtemp(prefix="promptlab-tests-")
atexit.register(shutil.rmtree, _SESSION_TMP, ignore_errors=True)

# What the caller had, before we isolate the environment (the integration test reads the real data root).
ORIGINAL_PROMPTLAB_DATA = os.environ.get("PROMPTLAB_DATA")
ORIGINAL_PROMPTLAB_CACHE = os.environ.get("PROMPTLAB_CACHE")

SESSION_ENV = {
    "PROMPTLAB_CACHE": os.path.join(_SESSION_TMP, "promptlab-cache"),
    "PROMPTLAB_RUNS": os.path.join(_SESSION_TMP, "runs"),
    "WANDB_MODE": "offline",
    "WANDB_DIR": os.path.join(_SESSION_TMP, "wandb"),
    "WANDB_CACHE_DIR": os.path.join(_SESSION_TMP, "wandb-cache"),
    "WANDB_CONFIG_DIR": os.path.join(_SESSION_TMP, "wandb-config"),
    "WANDB_DATA_DIR": os.path.join(_SESSION_TMP, "wandb-data"),
    "WANDB_ARTIFACT_DIR": os.path.join(_SESSION_TMP, "wandb-artifacts"),
    "WANDB_SILENT": "true",
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HOME": os.path.join(_SESSION_TMP, "hf-home"),
    "HF_DATASETS_CACHE": os.path.join(_SESSION_TMP, "hf-datasets"),
    "TOKENIZERS_PARALLELISM": "false",
    # One thread, here and in every `python -m promptlab.train` child: the tiny model gains nothing from more,
    # and on a busy 2-core machine two OpenMP threads made its matmuls ~100x slower (measured at load 4).
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}
os.environ.update(SESSION_ENV)
os.environ.pop("PROMPTLAB_DATA", None)
os.environ.pop("WANDB_API_KEY", None)

import json  # noqa: E402
from collections.abc import Callable, Iterable  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

import promptlab.config  # noqa: E402  (also registers the ${uid:} resolver)
from promptlab.models import (  # noqa: E402
    Backbone,
    load_backbone,
    precision,  # noqa: E402
    tiny_tokenizer,
)
from promptlab.tasks import TaskSpec  # noqa: E402

# Short sentences made of words the tiny BPE knows, so prompts stay a few dozen tokens long.
POSITIVE = ["great fun movie", "a good film", "love this movie", "great and fun", "a good review",
            "fun film with love", "good movie", "great film for fun"]
NEGATIVE = ["terrible boring film", "a bad movie", "hate this film", "boring and bad", "a terrible review",
            "bad film with hate", "boring movie", "terrible film to hate"]


# ---------------------------------------------------------------------------------------------- env


@pytest.fixture(autouse=True, scope="session")
def _fp32_by_default():
    """trainer.precision=auto means fp32 in tests, whatever the CPU: tests compare runs with fp32 recomputations
    (tests/test_precision.py covers auto and bf16 runs). Session-wide: module-scoped fixtures run models too."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(precision, "cpu_flags", set)
        yield


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path):
    """Per test: a fresh promptlab cache and runs dir; no data root unless the test sets one."""
    for key, value in SESSION_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("PROMPTLAB_CACHE", str(tmp_path / "promptlab-cache"))
    monkeypatch.setenv("PROMPTLAB_RUNS", str(tmp_path / "runs"))
    monkeypatch.delenv("PROMPTLAB_DATA", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment for a child ``python -m promptlab.train``: the isolated one, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k != "PROMPTLAB_DATA"}
    env.update(extra)
    return env


# --------------------------------------------------------------------------------------------- data


def write_jsonl(path: Path, rows: Iterable[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def sst2_rows(n_per_class: int, start_idx: int = 0, text_from: int = 0) -> list[dict]:
    """Alternating labels 1, 0, 1, 0 ... with distinct idx values; the sentences are numbered from ``text_from``
    (rows with the same text in two splits are overlaps, which promptlab drops from train and dev)."""
    rows = []
    for i in range(n_per_class):
        rows.append({"sentence": POSITIVE[i % len(POSITIVE)] + f" {text_from + i}", "label": 1})
        rows.append({"sentence": NEGATIVE[i % len(NEGATIVE)] + f" {text_from + i}", "label": 0})
    return [{"idx": start_idx + j, **r} for j, r in enumerate(rows)]


def rte_rows(n_per_class: int, text_from: int = 0) -> list[dict]:
    rows = []
    for i in range(n_per_class):
        rows.append({"sentence1": f"the movie was great {text_from + i}", "sentence2": "the film is good", "label": 0})
        rows.append({"sentence1": f"the film was boring {text_from + i}", "sentence2": "the movie is fun", "label": 1})
    return [{"idx": j, **r} for j, r in enumerate(rows)]


EVAL_TEXT_FROM = 500  # eval sentences are numbered from here: no eval row repeats a training row


def make_data_root(root: Path, train_per_class: int = 10, eval_per_class: int = 5) -> Path:
    write_jsonl(root / "sst2" / "train.jsonl", sst2_rows(train_per_class))
    write_jsonl(root / "sst2" / "validation.jsonl", sst2_rows(eval_per_class, text_from=EVAL_TEXT_FROM))
    write_jsonl(root / "rte" / "train.jsonl", rte_rows(train_per_class))
    write_jsonl(root / "rte" / "validation.jsonl", rte_rows(eval_per_class, text_from=EVAL_TEXT_FROM))
    return root


@pytest.fixture
def data_root(tmp_path) -> Path:
    """A data root with sst2/ and rte/: 10 train examples per class (8 of the 20 go to dev), 10 eval examples."""
    return make_data_root(tmp_path / "data")


# ------------------------------------------------------------------------------------------- config


def compose_config(overrides: Iterable[str] = (), return_hydra_config: bool = False) -> DictConfig:
    with initialize_config_dir(config_dir=str(promptlab.config.CONFIG_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides), return_hydra_config=return_hydra_config)


PEFT_METHODS = ("prompt_tuning", "prefix_tuning", "p_tuning", "lora", "dora", "ia3", "multitask_prompt_tuning")
CLIP_METHODS = ("clip_zero_shot", "coop", "linear_probe")  # model.kind=clip only
TRAINED_METHODS = (*PEFT_METHODS, "full_finetune", "coop", "linear_probe")  # test_configs checks this against build_method().trains


def config_names(group: str) -> list[str]:
    """Every option of a config group (the YAMLs under ``conf/<group>/``), e.g. ``config_names("data")``."""
    return promptlab.config.group_options(group)


def custom_csv(path: Path, n_per_class: int = 10) -> Path:
    """A user's own file for ``data=custom``: columns id, review, sentiment (the labels as words)."""
    lines = ["id,review,sentiment"]
    for j, r in enumerate(sst2_rows(n_per_class)):
        lines.append(f"{j},{r['sentence']},{('negative', 'positive')[r['label']]}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def data_overrides(dataset: str, folder: Path) -> list[str]:
    """What a shipped data config needs to validate: ``data=custom`` reads the user's file (one is written to
    ``folder/custom.csv``, so the task is still called custom); the others nothing."""
    if dataset != "custom":
        return []
    return [f"data.path={custom_csv(folder / 'custom.csv')}", "data.text=review", "data.label=sentiment"]


def data_cfg(dataset: str = "sst2", *overrides: str) -> DictConfig:
    """A composed ``data/`` config: ``data_cfg("sst2", "k_shot=3")`` (overrides are under ``data.``)."""
    return compose_config([f"data={dataset}", *(f"data.{o}" for o in overrides)]).data


def task_spec(dataset: str = "sst2", *overrides: str) -> TaskSpec:
    """The validated TaskSpec of a shipped data config, with ``data.`` overrides."""
    return TaskSpec.from_config(data_cfg(dataset, *overrides))


@pytest.fixture
def make_cfg(tmp_path, data_root) -> Callable[..., DictConfig]:
    """Compose a fast tiny-model config on the tmp data: ``make_cfg("method=prompt_tuning", ...)``."""

    def _make(*overrides: str, method: str = "zero_shot") -> DictConfig:
        base = [
            "model=tiny_random", f"method={method}", f"paths.data_root={data_root}",
            f"paths.cache_dir={tmp_path / 'cache'}", "logger=none", "data.k_shot=2", "eval_batch_size=8",
            "data.dev_size=8",
        ]
        if method in TRAINED_METHODS:
            base += ["method.max_steps=3", "method.batch_size=4"]
        return compose_config([*base, *overrides])

    return _make


@pytest.fixture
def run_dir(tmp_path) -> Path:
    return tmp_path / "run"


def read_result(run_dir: Path) -> dict:
    return json.loads((run_dir / "result.json").read_text())


def read_predictions(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------------------------------- models


def tiny_model_cfg() -> DictConfig:
    return OmegaConf.load(promptlab.config.CONFIG_DIR / "model" / "tiny_random.yaml")


@pytest.fixture
def tiny_backbone(tmp_path) -> Backbone:
    """A fresh tiny random Llama (seeded, so every instance has the same weights) and its tokenizer."""
    return load_backbone(tiny_model_cfg(), tmp_path / "cache")


@pytest.fixture(scope="session")
def tiny_tok():
    """The tiny chat tokenizer, shared read-only across tests."""
    return tiny_tokenizer()


def assert_greedy(model, prompt: list[int], new_tokens: list[int], tol: float = 2e-3, **kwargs) -> None:
    """Each generated token is the argmax of the model's logits, the whole unpadded sequence recomputed at every
    step, up to ``tol``: a random tiny model has near-ties, and a padded batch (PEFT drops position ids for
    virtual tokens) moves logits by ~1e-4, so exact text equality across paddings would test float noise."""
    ids = list(prompt)
    with torch.no_grad():
        for j, tok in enumerate(new_tokens):
            logits = model(input_ids=torch.tensor([ids]), **kwargs).logits[0, -1].float()
            assert float(logits.max() - logits[tok]) <= tol, f"step {j}: token {tok} is not the greedy choice"
            ids.append(tok)



def assert_only_trainable_changed(model, before: dict[str, torch.Tensor]) -> set[str]:
    """Every trainable weight moved and no other did (``before``: each weight as it was); the trainable names."""
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable, "nothing trains"
    for name, p in model.named_parameters():
        changed = not torch.equal(p.detach(), before[name])
        assert changed == (name in trainable), f"{name}: trainable={name in trainable}, changed={changed}"
    return trainable
