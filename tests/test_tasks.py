"""Tasks as YAML: local files by extension, per-example and multi-class choices, and every bad task input
failing with one clear message before the model loads."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from conftest import EVAL_TEXT_FROM, read_predictions, read_result, sst2_rows, write_jsonl
from omegaconf import OmegaConf, open_dict

import promptlab.run
import promptlab.run.execute
from promptlab.errors import ConfigError
from promptlab.prompts import Encoder
from promptlab.readout import ChoiceReadout, brute_force_scores
from promptlab.tasks import TaskSpec, load_task

COPA_LIKE = {
    "name": "tinycopa", "output_type": "choice", "source": "local", "local_dir": "tinycopa",
    "train_split": "train", "eval_split": "validation",
    "templates": ["{premise} What was the {question}?", "Premise: {premise} ({question})"], "template": 0,
    "label_column": "label", "choice_columns": ["choice1", "choice2"], "label_names": ["choice1", "choice2"],
    "metrics": ["accuracy", "macro_f1"], "primary_metric": "accuracy", "k_shot": None, "train_size": 4,
    "prompt_init_text": "Pick the more plausible sentence.", "dev_size": 8,
}


def copa_rows(n: int, text_from: int = 0) -> list[dict]:
    return [{"idx": i, "premise": f"the movie was great {text_from + i}", "question": "effect" if i % 2 else "cause",
             "choice1": "a good film with love" if i % 2 else "boring", "choice2": "terrible", "label": i % 2}
            for i in range(n)]


def with_task(cfg, **task):
    with open_dict(cfg):
        cfg.data = OmegaConf.create(task)
    return cfg


@pytest.mark.parametrize("ext", ["csv", "tsv", "parquet"])
def test_local_files_are_read_by_extension(data_root, ext):
    splits = {"train": sst2_rows(6), "validation": sst2_rows(4, text_from=EVAL_TEXT_FROM)}
    folder = data_root / f"sst2_{ext}"
    folder.mkdir()
    for split, rows in splits.items():
        frame = pd.DataFrame(rows)
        path = folder / f"{split}.{ext}"
        if ext == "parquet":
            frame.to_parquet(path)
        else:
            frame.to_csv(path, sep="\t" if ext == "tsv" else ",", index=False)
    spec = TaskSpec.from_config({**OmegaConf.to_container(OmegaConf.load(promptlab.config.CONFIG_DIR / "data" / "sst2.yaml")),
                                 "local_dir": f"sst2_{ext}", "source": "local", "dev_size": 8})
    task = load_task(spec, str(data_root))
    assert [(r["idx"], r["sentence"], r["label"]) for r in task.eval] == [(r["idx"], r["sentence"], r["label"]) for r in rows]
    assert len(task.train) + len(task.dev) == 12


def test_rows_without_integer_idx_get_their_position(data_root):
    write_jsonl(data_root / "noidx" / "train.jsonl", [{"sentence": f"good {i}", "label": 1, "idx": "a"} for i in range(10)])
    write_jsonl(data_root / "noidx" / "validation.jsonl", [{"sentence": "bad", "label": 0}] * 2)
    spec = TaskSpec.from_config({**OmegaConf.to_container(OmegaConf.load(promptlab.config.CONFIG_DIR / "data" / "sst2.yaml")),
                                 "local_dir": "noidx", "dev_size": 8})
    task = load_task(spec, str(data_root))
    assert sorted(r["idx"] for r in task.train + task.dev) == list(range(10)) and [r["idx"] for r in task.eval] == [0, 1]


def test_per_example_choices_score_like_brute_force(data_root, tiny_backbone):
    write_jsonl(data_root / "tinycopa" / "validation.jsonl", copa_rows(4, text_from=EVAL_TEXT_FROM))
    write_jsonl(data_root / "tinycopa" / "train.jsonl", copa_rows(12))
    spec = TaskSpec.from_config(COPA_LIKE)
    task = load_task(spec, str(data_root))
    items = [Encoder(tiny_backbone.tokenizer, spec).item(r, train=False) for r in task.eval]
    assert items[0]["choices"] == ["boring", "terrible"] and items[1]["choices"][0] == "a good film with love"
    prompts, choices = [x["prompt_ids"] for x in items], [x["choice_ids"] for x in items]
    assert any(len(c) > 1 for cs in choices for c in cs)  # multi-token answers take the per-sequence path
    with torch.no_grad():
        fast = ChoiceReadout(tiny_backbone.tokenizer.pad_token_id).scores(tiny_backbone.model, prompts, choices)
        slow = brute_force_scores(tiny_backbone.model, prompts, choices)
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)


def test_copa_like_task_trains_and_records(make_cfg, data_root, run_dir):
    write_jsonl(data_root / "tinycopa" / "validation.jsonl", copa_rows(6, text_from=EVAL_TEXT_FROM))
    write_jsonl(data_root / "tinycopa" / "train.jsonl", copa_rows(14))
    result = promptlab.run.run(with_task(make_cfg(method="prompt_tuning"), **COPA_LIKE), run_dir)
    assert result["status"] == "completed" and result["chance"] == 0.5
    rows = read_predictions(run_dir)
    assert {r["pred_name"] for r in rows} <= {"choice1", "choice2"}


@pytest.mark.parametrize("n_classes", [3, 5, 6])
def test_multiclass_fixed_choices(make_cfg, data_root, run_dir, n_classes):
    words = ["good", "bad", "fun", "boring", "great", "terrible"][:n_classes]
    rows = [{"idx": i, "text": f"{words[i % n_classes]} movie {i}", "label": i % n_classes} for i in range(8 * n_classes)]
    write_jsonl(data_root / "multi" / "train.jsonl", rows[2 * n_classes:])
    write_jsonl(data_root / "multi" / "validation.jsonl", rows[: 2 * n_classes])
    task = {"name": "multi", "output_type": "choice", "local_dir": "multi", "templates": ["Review: {text}"],
            "label_column": "label", "choices": words, "metrics": ["accuracy", "macro_f1"],
            "primary_metric": "accuracy", "k_shot": 2, "dev_size": 2 * n_classes + 2}
    result = promptlab.run.run(with_task(make_cfg(method="few_shot", **{}), **task), run_dir)
    assert result["status"] == "completed" and result["chance"] == pytest.approx(1 / n_classes)
    assert all(len(r["log_probs"]) == n_classes for r in read_predictions(run_dir))


GEN = {"name": "g", "output_type": "generate", "local_dir": "sst2", "templates": ["{sentence}"], "target": "{sentence}",
       "metrics": ["rougeL"], "primary_metric": "rougeL", "train_size": 4, "prompt_init_text": "Repeat.", "dev_size": 8}
CHOICE = {"name": "c", "output_type": "choice", "local_dir": "sst2", "templates": ["{sentence}"], "label_column": "label",
          "choices": ["negative", "positive"], "metrics": ["accuracy"], "primary_metric": "accuracy", "k_shot": 2,
          "prompt_init_text": "Classify.", "dev_size": 8}


@pytest.mark.parametrize(("task", "match"), [
    ({**CHOICE, "output_type": "ranking"}, "output_type 'ranking' is unknown"),
    ({**CHOICE, "metrics": ["rougeL"], "primary_metric": "rougeL"}, "rougeL"),
    ({**CHOICE, "metrics": ["bogus_metric"], "primary_metric": "bogus_metric"}, "bogus_metric"),
    ({**CHOICE, "primary_metric": "macro_f1"}, "primary_metric"),
    ({**CHOICE, "templates": ["no placeholder"]}, "no {column} placeholder"),
    ({**CHOICE, "choices": ["negative"]}, "at least two"),
    ({**CHOICE, "label_names": ["a", "b", "c"]}, "label_names"),
    ({**CHOICE, "choice_columns": ["x", "y"]}, "exactly one of choices"),
    ({**CHOICE, "wrong_key": 1}, "unknown key"),
    ({**GEN, "target": "{summary}"}, "summary"),
    ({**GEN, "filters": [{"type": "regex", "pattern": "(unclosed"}]}, "data.filters"),
    ({**GEN, "filters": [{"type": "nope"}]}, "nope"),
    ({**GEN, "filters": [{"type": "map_choice"}]}, "map_choice"),
    ({**GEN, "generation": {"max_new_tokens": 0}}, "max_new_tokens"),
    ({**GEN, "generation": {"max_new_tokens": 8, "until": [""]}}, "stop string"),
    ({**GEN, "target_replace": [["(bad", "x"]]}, "target_replace"),
    ({**GEN, "k_shot": 4}, "has no classes"),
    ({**GEN, "metrics": ["evaluate:bertscore"], "primary_metric": "evaluate:bertscore"}, "evaluate"),
    ({**GEN, "eval_limit": 0}, "eval_limit"),
    ({**GEN, "train_size": 0}, "train_size"),
])
def test_bad_task_config_fails_before_the_model_loads(make_cfg, run_dir, monkeypatch, task, match):
    monkeypatch.setattr(promptlab.run.execute, "load_backbone", lambda *a, **k: pytest.fail("model loaded"))
    cfg = with_task(make_cfg(method="prompt_tuning"), **task)
    with pytest.raises(ConfigError, match=match) as err:
        promptlab.run.run(cfg, run_dir)
    assert err.value.fix  # every message says what to do
    assert read_result(run_dir)["status"] == "failed"
