"""Serving several tasks' adapters from one backbone (``serving.MultiTaskModel``) on the tiny model: a batch mixing
two tasks' rows scores and generates as each task's own reloaded PEFT model does, and what cannot be served is
refused with one clear message."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import assert_greedy, compose_config, make_data_root, read_predictions
from safetensors.torch import save_file

import promptlab.run
from promptlab.data import eval_items
from promptlab.errors import ConfigError
from promptlab.methods import build_method
from promptlab.models import load_backbone
from promptlab.models.serving import MultiTaskModel
from promptlab.prompts import Encoder
from promptlab.readout import ChoiceReadout, GenerateReadout
from promptlab.readout.model import pad
from promptlab.tasks import TaskSpec, load_task

TASKS = ("sst2", "rte")
METHODS = ("prompt_tuning", "p_tuning", "lora")
# Plain prompts of different lengths (left padding differs per row); the tiny model echoes their words, and the
# stop strings end some rows early ("movie movie" contains "e m").
TEXTS = ["good movie", "a bad film with love and hate", "great", "positive good", "boring review of the film"]
STOPS = ["e m", "oo", "d g"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[tuple[str, str], tuple]:
    """A prompt-tuning, a P-tuning and a LoRA adapter for each of sst2 and rte, trained once: (method, task) -> (cfg, run_dir).
    A high learning rate, so the two tasks' adapters differ visibly after 2 steps."""
    root = tmp_path_factory.mktemp("serving")
    data = make_data_root(root / "data")
    out = {}
    for method in METHODS:
        for task in TASKS:
            cfg = compose_config([
                "model=tiny_random", f"method={method}", f"data={task}", f"paths.data_root={data}",
                f"paths.cache_dir={root / 'cache'}", "logger=none", "data.k_shot=2", "eval_batch_size=8",
                "method.max_steps=2", "method.batch_size=4", "method.lr=0.3", "data.dev_size=8"])
            run_dir = root / f"{method}_{task}"
            result = promptlab.run.run(cfg, run_dir)
            assert result["status"] == "completed", result.get("error")
            out[method, task] = cfg, run_dir
    return out


def served(runs, method: str) -> tuple[MultiTaskModel, object]:
    """Both tasks' adapters on one fresh backbone (task ids 0=sst2, 1=rte), and its tokenizer."""
    cfg = runs[method, TASKS[0]][0]
    backbone = load_backbone(cfg.model, cfg.paths.cache_dir)
    return MultiTaskModel(backbone.model, {t: runs[method, t][1] / "checkpoint" for t in TASKS}), backbone.tokenizer


def alone(runs, method: str, task: str):
    """The task's adapter reloaded the way promptlab-eval reloads it: one PeftModel on its own backbone."""
    cfg, run_dir = runs[method, task]
    return build_method(cfg.method).load(load_backbone(cfg.model, cfg.paths.cache_dir), run_dir / "checkpoint")


def mixed_items(runs, method: str, tok) -> list[dict]:
    """Both tasks' eval items, each encoded with its task's template and task id: sst2, rte, sst2, rte ..."""
    per_task = []
    for i, task in enumerate(TASKS):
        cfg = runs[method, task][0]
        spec = TaskSpec.from_config(cfg.data)
        per_task.append(eval_items(Encoder(tok, spec, task_id=i), load_task(spec, cfg.paths.data_root, cfg.seed).eval))
    return [x for pair in zip(*per_task, strict=True) for x in pair]


@pytest.mark.parametrize("method", METHODS)
def test_a_mixed_batch_scores_as_each_task_alone(runs, method):
    model, tok = served(runs, method)
    mixed = mixed_items(runs, method, tok)
    readout = ChoiceReadout(tok.pad_token_id)
    with torch.no_grad():
        scores = readout.scores(model, [x["prompt_ids"] for x in mixed], [x["choice_ids"] for x in mixed],
                                [x["task_id"] for x in mixed])
        for i, task in enumerate(TASKS):
            rows = [k for k, x in enumerate(mixed) if x["task_id"] == i]
            items = [mixed[k] for k in rows]
            want = readout.scores(alone(runs, method, task), [x["prompt_ids"] for x in items],
                                  [x["choice_ids"] for x in items], [0] * len(items))
            torch.testing.assert_close(scores[rows], want, atol=1e-4, rtol=0)
            assert scores[rows].argmax(1).tolist() == want.argmax(1).tolist()
            recorded = {r["idx"]: r for r in read_predictions(runs[method, task][1])}
            assert scores[rows].argmax(1).tolist() == [recorded[x["idx"]]["pred"] for x in items]
            torch.testing.assert_close(scores[rows], torch.tensor([recorded[x["idx"]]["answer_logprobs"] for x in items]),
                                       atol=1e-4, rtol=0)
        swapped = readout.scores(model, [x["prompt_ids"] for x in mixed], [x["choice_ids"] for x in mixed],
                                 [1 - x["task_id"] for x in mixed])
    assert (swapped - scores).abs().max() > 1e-3, "each row's task id did not choose its adapter"


@pytest.mark.parametrize("method", METHODS)
def test_each_tasks_rows_continue_their_own_cached_prefix(runs, method):
    """Inference runs each task's shared prompt prefix once under its own adapter (a soft prompt's virtual tokens
    included) and continues it per row: the scores of whole sequences (fp32), batch after batch, beside a task's
    lone row (run whole), with the task ids swapped, and for the same prompts under both tasks (the other task's
    cache of the same tokens is never reused)."""
    model, tok = served(runs, method)
    mixed = mixed_items(runs, method, tok)
    sst2 = [x for x in mixed if x["task_id"] == 0]
    batches = [(mixed[:4], None), (mixed[4:8], None), (mixed[:4], [1, 0, 1, 0]), ([*sst2[:3], mixed[1]], None),
               (sst2[:4], [0, 0, 1, 1])]
    cached, whole = ChoiceReadout(tok.pad_token_id), ChoiceReadout(tok.pad_token_id)
    whole.prefix.enabled = False
    lengths = []
    handle = model.get_decoder().register_forward_hook(lambda m, a, out: lengths.append(out[0].shape[1]))
    with torch.no_grad():
        for items, task_ids in batches:
            args = ([x["prompt_ids"] for x in items], [x["choice_ids"] for x in items],
                    task_ids or [x["task_id"] for x in items])
            torch.testing.assert_close(cached.scores(model, *args), whole.scores(model, *args), atol=1e-5, rtol=0)
    handle.remove()
    assert sorted(cached.prefix.tasks) == [0, 1] and all(len(c.prefix) >= 32 for c in cached.prefix.tasks.values())
    longest = max(len(x["prompt_ids"]) for x in mixed[:8])
    assert sum(n < longest for n in lengths) > len(lengths) / 2  # most forwards saw suffixes only


@pytest.mark.parametrize("method", METHODS)
def test_a_mixed_batch_generates_as_each_task_alone(runs, method):
    """Left-padded mixed rows with stop strings write each task's greedy tokens under its own PEFT model (the whole
    unpadded sequence recomputed at every step, up to float noise: ``assert_greedy``); generate returns prompt +
    new tokens, as PeftModel.generate does."""
    model, tok = served(runs, method)
    prompts = [tok(t, add_special_tokens=False)["input_ids"] for t in TEXTS]
    task_ids = [0, 1, 0, 1, 0]
    readout = GenerateReadout(tok, max_new_tokens=8, until=STOPS)
    got = readout.generate(model, prompts, task_ids)
    ids, mask = pad(prompts, tok.pad_token_id, torch.device("cpu"), left=True)
    out = model.generate(input_ids=ids, attention_mask=mask, generation_config=readout.config,
                         task_ids=torch.tensor(task_ids))
    assert torch.equal(out[:, : ids.shape[1]], ids)
    new = out[:, ids.shape[1]:].tolist()
    for i, task in enumerate(TASKS):
        peft_model = alone(runs, method, task)
        for k in (k for k, t in enumerate(task_ids) if t == i):
            assert_greedy(peft_model, prompts[k], new[k][: got[k].num_tokens])
    assert any(g.num_tokens < 8 for g in got), "no stop string ended a row: pick STOPS the outputs contain"
    assert len({g.text for g in got}) > 1


def fake_adapter(directory: Path, peft_type: str = "PROMPT_TUNING", tokens: int = 5, **config) -> Path:
    """An adapter directory as save_pretrained writes one (config and a prompt table; enough to be refused)."""
    directory.mkdir(parents=True)
    (directory / "adapter_config.json").write_text(json.dumps({"peft_type": peft_type, "num_virtual_tokens": tokens,
                                                               **config}))
    save_file({"prompt_embeddings": torch.zeros(tokens, 32)}, directory / "adapter_model.safetensors")
    return directory


REFUSED = {
    "mixed kinds": (lambda runs, tmp: {"sst2": runs["prompt_tuning", "sst2"][1] / "checkpoint",
                                       "rte": runs["lora", "rte"][1] / "checkpoint"},
                    r"task rte has a LoRA adapter; the tasks before it \(sst2\) have soft prompts"),
    "prompt lengths": (lambda runs, tmp: {"sst2": runs["prompt_tuning", "sst2"][1] / "checkpoint",
                                          "short": fake_adapter(tmp / "short", tokens=5)},
                       r"task short: its soft prompt has 5 virtual tokens, the tasks before it \(sst2\) 20"),
    "prefix tuning": (lambda runs, tmp: {"a": fake_adapter(tmp / "prefix", "PREFIX_TUNING")},
                      r"task a: a PREFIX_TUNING adapter cannot be served in a mixed-task batch"),
    "dora": (lambda runs, tmp: {"a": fake_adapter(tmp / "dora", "LORA", use_dora=True)},
             r"task a: a DoRA adapter cannot be served"),
    "missing": (lambda runs, tmp: {"a": tmp / "nowhere" / "checkpoint"}, r"task a: .*checkpoint does not exist"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_what_cannot_be_served_is_one_clear_error(runs, tiny_backbone, tmp_path, case):
    checkpoints, match = REFUSED[case]
    with pytest.raises(ConfigError, match=match) as err:
        MultiTaskModel(tiny_backbone.model, checkpoints(runs, tmp_path))
    assert err.value.fix


def test_a_task_id_out_of_range_names_the_valid_ones(runs):
    model, tok = served(runs, "prompt_tuning")
    prompts = [tok("good movie", add_special_tokens=False)["input_ids"]] * 2
    choices = [[[5], [6]]] * 2
    for bad in (2, -1):
        with pytest.raises(ValueError, match=rf"task id {bad} is out of range: valid ids are 0\.\.1 "
                                             r"\(tasks: 0=sst2, 1=rte\)"):
            ChoiceReadout(tok.pad_token_id).scores(model, prompts, choices, [0, bad])
    with pytest.raises(ValueError, match="every batch must say each row's task"):
        ChoiceReadout(tok.pad_token_id).scores(model, prompts, choices)
