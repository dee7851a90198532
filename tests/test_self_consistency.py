"""Sampling, several generations per example, list filters and self-consistency (method=self_consistency)."""

from __future__ import annotations

from unittest import mock

import pytest
from conftest import read_predictions
from test_generation import gen_cfg, plain, prompts_of  # noqa: F401  (gen_cfg: a fixture)

import promptlab.readout.generate as G
import promptlab.run
from promptlab.errors import ConfigError
from promptlab.evaluation.filters import build_filters, build_list_filters, majority_vote, take_first


def test_majority_vote_and_take_first():
    assert majority_vote(["1", "2", "2"]) == ["2"]
    assert majority_vote(["3", "5", "5", "3"]) == ["3"]  # a tie goes to the answer that came first
    assert majority_vote([]) == [] and take_first(["a", "b"]) == ["a"]
    chain = build_list_filters([{"type": "last_number"}, {"type": "majority_vote"}])
    assert chain(["so 4", "it is 5", "then 4."]) == ["4"]  # text filters map each answer, then the vote
    assert build_filters([{"type": "majority_vote"}])("7 apples", None) == "7 apples"  # one answer: unchanged


@pytest.mark.parametrize("by_hand", [True, False])
def test_sampling_near_zero_temperature_is_greedy(tiny_backbone, by_hand):
    """Both decoding paths (the hand loop and model.generate) sample from softmax(logits / t): at a tiny t the
    draw is the argmax, so the text is greedy decoding's."""
    tok, model = tiny_backbone.tokenizer, tiny_backbone.model
    prompts = prompts_of(tok, ["good movie", "a bad film with love", "great fun"])
    greedy = G.GenerateReadout(tok, 8)
    cold = G.GenerateReadout(tok, 8, sampling=G.Sampling(1, 1e-6, 0))
    with mock.patch.object(G, "decodable", return_value=by_hand):
        assert [g.text for g in cold.generate(model, prompts)] == [g.text for g in greedy.generate(model, prompts)]


@pytest.mark.parametrize("by_hand", [True, False])
def test_sampling_is_seeded_per_pass(tiny_backbone, by_hand):
    tok, model = tiny_backbone.tokenizer, tiny_backbone.model
    prompts = plain(tok, ["positive good", "a bad film with love and hate"]) * 3

    def texts(seed: int, passes: int = 1) -> list[list[str]]:
        gen = G.GenerateReadout(tok, 12, sampling=G.Sampling(1, 1.0, seed))
        out = []
        for _ in range(passes):
            gen.new_pass()
            with mock.patch.object(G, "decodable", return_value=by_hand):
                out.append([g.text for g in gen.generate(model, prompts)])
        return out

    first, again = texts(0, passes=2)
    assert first == again  # every evaluation pass draws the same stream
    assert len(set(first)) > 2  # the same prompt, sampled, gives different texts
    assert texts(1)[0] != first


def test_self_consistency_on_a_generation_task_votes_over_filtered_answers(gen_cfg, run_dir):  # noqa: F811
    cfg = gen_cfg("method.num_demos=2", "method.sampling.samples=3", method="self_consistency")
    result = promptlab.run.run(cfg, run_dir)
    assert result["status"] == "completed" and result["method_info"]["display_name"] == "Self-consistency"
    extract = build_filters(cfg.data.filters)
    rows = read_predictions(run_dir)
    for r in rows:
        assert len(r["generations"]) == 3 and r["generation"] in r["generations"]
        answers = [extract(t, None) for t in r["generations"]]
        assert r["answer"] == majority_vote(answers)[0]
        assert r["generation"] == r["generations"][answers.index(r["answer"])]  # the first path with that answer
    assert result["costs"]["generated_tokens"] > len(rows) * 3  # every path's tokens are counted


def test_self_consistency_on_a_choice_task_votes_over_scored_paths(make_cfg, run_dir):
    cfg = make_cfg("method.num_demos=2", "method.max_new_tokens=4", "method.sampling.samples=3",
                   "select_readout=false", method="self_consistency")
    result = promptlab.run.run(cfg, run_dir)
    assert result["status"] == "completed"
    rows = read_predictions(run_dir)
    for r in rows:
        assert len(r["generations"]) == len(r["votes"]) == 3 and set(r["votes"]) <= {"negative", "positive"}
        assert r["pred_name"] == majority_vote(r["votes"])[0]
        assert r["generation"] == r["generations"][r["votes"].index(r["pred_name"])]
    assert result["metrics"]["accuracy"] == pytest.approx(sum(r["score"] for r in rows) / len(rows))


@pytest.mark.parametrize(("method", "overrides", "match"), [
    ("zero_shot_cot", ["method.num_demos=2"], "is zero-shot"),
    ("zero_shot", ["method.num_demos=2"], "is zero-shot"),
    ("few_shot", ["method.num_demos=0"], "is few-shot"),
    ("self_consistency", ["method.sampling.temperature=0"], "greedy samples are all the same"),
    ("self_consistency", ["method.sampling.samples=0"], "not a whole number >= 1"),
    ("self_consistency", ["method.sampling.temperature=hot"], "not a number >= 0"),
    ("self_consistency", ["+method.sampling.top_k=5"], "method.sampling.top_k is not a key"),
    ("self_consistency", ["method.filters=[]"], "no method.filters"),
    ("self_consistency", ["method.filters=[{type:vote}]"], "unknown filter type"),
    ("few_shot", ["+method.sampling.samples=2", "+method.sampling.temperature=0.7",
                  "+method.filters=[{type:majority_vote}]"], "generates nothing"),
])
def test_sampling_mistakes_are_refused_before_the_model_loads(make_cfg, method, overrides, match):
    with pytest.raises(ConfigError, match=match):
        promptlab.run.plan(make_cfg(*overrides, method=method))


def test_samples_of_a_prompt_share_its_prefill(tiny_backbone):
    """The hand loop reads each prompt once and repeats its key/value cache for the samples: at a tiny temperature
    every sample is greedy decoding's text, as model.generate (which reads the prompt once per sample) writes."""
    tok, model = tiny_backbone.tokenizer, tiny_backbone.model
    prompts = prompts_of(tok, ["good movie", "a bad film with love and hate", "great fun"])
    greedy = [g.text for g in G.GenerateReadout(tok, 8).generate(model, prompts)]
    cold = G.GenerateReadout(tok, 8, sampling=G.Sampling(3, 1e-6, 0))
    seen = []
    hook = model.get_decoder().register_forward_pre_hook(lambda m, args, kw: seen.append(kw["input_ids"].shape),
                                                         with_kwargs=True)
    try:
        shared = [g.text for g in cold.generate(model, prompts, repeats=3)]
    finally:
        hook.remove()
    assert seen[0][0] == 3 and all(shape == (9, 1) for shape in seen[1:2])  # one prefill row per prompt, then 9 rows
    assert shared == [t for t in greedy for _ in range(3)]
    with mock.patch.object(G, "decodable", return_value=False):
        assert [g.text for g in cold.generate(model, prompts, repeats=3)] == shared
