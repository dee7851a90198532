"""Results do not depend on how evaluation is batched, nor on anything but the config and seed."""

from __future__ import annotations

import pytest
from conftest import read_predictions, write_jsonl
from omegaconf import OmegaConf, open_dict
from test_generation import GEN_TASK, qa_rows
from test_tasks import COPA_LIKE, copa_rows

import promptlab.train


def runs_with_batch_sizes(cfg, tmp_path, sizes=(1, 3, 16)) -> list[list[dict]]:
    out = []
    for size in sizes:
        with open_dict(cfg):
            cfg.eval_batch_size = size
        promptlab.train.run(cfg, tmp_path / f"b{size}")
        out.append(read_predictions(tmp_path / f"b{size}"))
    return out


def assert_same(a: list[dict], b: list[dict], tol: float = 1e-5) -> None:
    assert [r["idx"] for r in a] == [r["idx"] for r in b]
    for x, y in zip(a, b, strict=True):
        assert x.get("pred") == y.get("pred") and x.get("generation") == y.get("generation")
        assert x["score"] == y["score"]
        for p, q in zip(x.get("log_probs", []), y.get("log_probs", []), strict=True):
            assert p == pytest.approx(q, abs=tol)


def test_choice_scores_do_not_depend_on_the_eval_batch(make_cfg, tmp_path):
    first, *rest = runs_with_batch_sizes(make_cfg(method="few_shot"), tmp_path)
    for other in rest:
        assert_same(first, other)


def test_per_example_multi_token_choices_do_not_depend_on_the_eval_batch(make_cfg, data_root, tmp_path):
    write_jsonl(data_root / "tinycopa" / "validation.jsonl", copa_rows(7))
    write_jsonl(data_root / "tinycopa" / "train.jsonl", copa_rows(8))
    cfg = make_cfg(method="zero_shot")
    with open_dict(cfg):
        cfg.data = OmegaConf.create(COPA_LIKE)
    first, *rest = runs_with_batch_sizes(cfg, tmp_path)
    for other in rest:
        assert_same(first, other)


def test_generation_does_not_depend_on_the_eval_batch(make_cfg, data_root, tmp_path):
    write_jsonl(data_root / "tinyqa" / "train.jsonl", qa_rows(12))
    write_jsonl(data_root / "tinyqa" / "test.jsonl", qa_rows(7))
    cfg = make_cfg(method="zero_shot_cot")
    with open_dict(cfg):
        cfg.data = OmegaConf.create(GEN_TASK)
    first, *rest = runs_with_batch_sizes(cfg, tmp_path)
    for other in rest:
        assert_same(first, other)
