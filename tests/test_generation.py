"""Generation on the tiny model: greedy decoding (deterministic, stop strings, max_new_tokens, batch
invariance), training on targets, chain-of-thought, and ``promptlab-eval`` reproducing saved runs."""

from __future__ import annotations

from unittest import mock

import pytest
import torch
from conftest import read_predictions, read_result, write_jsonl
from omegaconf import OmegaConf, open_dict
from safetensors.torch import load_file

import promptlab.readout.generate as G
import promptlab.run
import promptlab.run.execute
from promptlab.data import eval_items
from promptlab.eval import main as eval_main
from promptlab.eval import run_eval
from promptlab.methods import Method, build_method
from promptlab.prompts import Encoder, encode_prompt
from promptlab.readout import GenerateReadout
from promptlab.tasks import TaskSpec, load_task

WORDS = ["good movie", "a bad film", "great fun", "boring review", "love this film", "hate the movie"]


def qa_rows(n: int) -> list[dict]:
    """GSM8K-shaped rows: a question and a worked answer ending in '#### <number>'."""
    return [{"question": f"{WORDS[i % len(WORDS)]} {i}", "answer": f"the answer <<{i}+0={i}>> is good\n#### {i}"}
            for i in range(n)]


GEN_TASK = {
    "name": "tinyqa", "output_type": "generate", "source": "local", "local_dir": "tinyqa",
    "train_split": "train", "eval_split": "test",
    "templates": ["Question: {question}", "{question}\nAnswer with a number."], "template": 0,
    "system_prompt": None, "prompt_init_text": "Answer the question.",
    "target": "{answer}", "target_replace": [["<<[^>]*>>", ""], ["\\n#### (.*)$", "\\nThe answer is \\1."]],
    "reference_column": "answer", "reference_filters": [{"type": "regex", "pattern": "#### (.+)$"}],
    "filters": [{"type": "regex", "pattern": "answer is (\\S+)", "fallback": "keep"}, {"type": "last_number"}],
    "generation": {"max_new_tokens": 6, "until": []}, "metrics": ["exact_match"], "primary_metric": "exact_match",
    "k_shot": None, "train_size": 8, "max_prompt_tokens": 2048, "max_target_tokens": 32, "dev_size": 8,
}


@pytest.fixture
def gen_cfg(make_cfg, data_root):
    """A tiny generation task (16 train rows, 8 of them carved out for dev; 6 test rows) on the tiny model:
    ``gen_cfg("method=...")``."""
    rows = qa_rows(22)
    write_jsonl(data_root / "tinyqa" / "train.jsonl", rows[6:])
    write_jsonl(data_root / "tinyqa" / "test.jsonl", rows[:6])

    def _make(*overrides: str, method: str = "zero_shot", **task) -> OmegaConf:
        cfg = make_cfg(*overrides, method=method)
        with open_dict(cfg):
            cfg.data = OmegaConf.create({**GEN_TASK, **task})
        return cfg

    return _make


def readout_for(backbone, max_new_tokens=8, until=()):
    return GenerateReadout(backbone.tokenizer, max_new_tokens, until)


def prompts_of(tok, texts):
    return [encode_prompt(tok, [{"role": "user", "content": t}]) for t in texts]


def test_greedy_generation_is_deterministic_and_counts_tokens(tiny_backbone):
    gen = readout_for(tiny_backbone, max_new_tokens=7)
    prompts = prompts_of(tiny_backbone.tokenizer, ["good movie", "a bad film with love"])
    first, second = gen.generate(tiny_backbone.model, prompts), gen.generate(tiny_backbone.model, prompts)
    assert [g.text for g in first] == [g.text for g in second]
    assert all(1 <= g.num_tokens <= 7 for g in first)
    assert gen.generated_tokens == 2 * sum(g.num_tokens for g in first)
    assert gen.generation_seconds > 0


def plain(tok, texts):
    """Prompts without the chat template: the random tiny model then echoes the last word ("good good ...")."""
    return [tok(t, add_special_tokens=False)["input_ids"] for t in texts]


@pytest.mark.parametrize("slots", [True, False], ids=["slots", "generate"])
def test_stop_strings_and_max_new_tokens(tiny_backbone, slots):
    """Both decoders (the slots, and ``model.generate`` with ``StopOnGeneratedText``) end a row at the token that
    completes a stop string, not at one the prompt holds."""
    tok, model = tiny_backbone.tokenizer, tiny_backbone.model
    prompts = plain(tok, ["positive good"])
    with mock.patch.object(G, "decodable", return_value=slots):
        free = readout_for(tiny_backbone, max_new_tokens=12).generate(model, prompts)[0]
        assert free.num_tokens == 12 and free.text.startswith("good good good")  # no EOS: the budget ends it
        stopped = readout_for(tiny_backbone, max_new_tokens=12, until=["e g", "d g"]).generate(model, prompts)[0]
        assert stopped.text == "goo"  # cut before the stop string ("e g" is in the prompt only)
        assert stopped.num_tokens == 2  # and decoding stopped at the token that completed it
        short = readout_for(tiny_backbone, max_new_tokens=3).generate(model, prompts)[0]
        assert short.num_tokens == 3 and short.text == "good good good"


def test_batch_generates_the_same_as_one_at_a_time(tiny_backbone):
    gen = readout_for(tiny_backbone, max_new_tokens=8)
    texts = ["positive negative", "a bad film with love and hate for this movie yes", "great fun movie review"]
    for prompts in (plain(tiny_backbone.tokenizer, texts), prompts_of(tiny_backbone.tokenizer, texts)):
        assert len({len(p) for p in prompts}) == 3  # different lengths: left padding matters
        batched = [g.text for g in gen.generate(tiny_backbone.model, prompts)]
        single = [gen.generate(tiny_backbone.model, [p])[0].text for p in prompts]
        assert batched == single


@pytest.mark.parametrize("adapter", [None, "lora"])
def test_hand_decoding_drops_finished_rows_and_matches_generate(tiny_backbone, adapter):
    """GenerateReadout.greedy (finished rows leave the batch) writes what transformers' generate writes."""

    model = tiny_backbone.model
    if adapter:
        from peft import LoraConfig, get_peft_model

        torch.manual_seed(0)
        model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False)).eval()
    assert G.decodable(model)
    tok = tiny_backbone.tokenizer
    texts = ["positive good", "a bad film with love and hate for this movie yes", "great fun movie review", "good"]
    lengths = set()
    for prompts in (plain(tok, texts), prompts_of(tok, texts)):
        for until in ((), ("d g", "ie", " of", "unun"), ("\n",)):
            gen = readout_for(tiny_backbone, max_new_tokens=10, until=until)
            with mock.patch.object(gen, "_finished", wraps=gen._finished) as finished:
                by_hand = gen.generate(model, prompts)
            with mock.patch.object(G, "decodable", return_value=False):
                reference = gen.generate(model, prompts)
            assert [(g.text, g.num_tokens) for g in by_hand] == [(g.text, g.num_tokens) for g in reference]
            # one check per live row per step: no step is spent on a row that has finished
            assert finished.call_count == sum(g.num_tokens for g in by_hand)
            lengths.add(tuple(g.num_tokens for g in by_hand))
    assert any(len(set(n)) > 1 for n in lengths), lengths  # rows did finish at different steps


@pytest.mark.parametrize("width", [1, 2, 3])
def test_slots_take_the_next_prompt_and_a_shared_prefix_is_read_once(tiny_backbone, width):
    """Continuous batching with fewer slots than prompts: a finished row's slot takes the next prompt (columns are
    added in front for a longer one, dropped when no slot reads them; prompts read two at a time); a prefix every
    prompt shares is read once for the call; a prompt's samples share its prefill. Every row is still what transformers' generate writes."""
    import promptlab.readout.decoding as D

    tok, model = tiny_backbone.tokenizer, tiny_backbone.model
    texts = ["good", "a bad film with love and hate for this movie yes", "great fun", "positive good",
             "love this film", "hate the movie boring review a bad film"]
    shared = "you read a movie review and you say what the review says about the movie in a few words " * 2
    decoders: list[D.SlotDecoder] = []

    class Recorded(D.SlotDecoder):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs, prefill_rows=2)  # filling 3 slots takes two passes
            decoders.append(self)

    for prompts in (plain(tok, texts), plain(tok, [shared + t for t in texts])):
        gen = readout_for(tiny_backbone, max_new_tokens=10, until=("d g", "ie"))
        gen.width = width
        with mock.patch.object(G, "SlotDecoder", Recorded):
            by_hand = gen.generate(model, prompts)
            twice = gen.generate(model, prompts, repeats=2)
        with mock.patch.object(G, "decodable", return_value=False):
            reference = [(g.text, g.num_tokens) for g in gen.generate(model, prompts)]
        assert [(g.text, g.num_tokens) for g in by_hand] == reference
        assert [(g.text, g.num_tokens) for g in twice] == [r for r in reference for _ in range(2)]
    assert decoders[0].shared == 0 and decoders[2].shared >= 32  # the reviews share the instruction's tokens


def test_zero_shot_generation_run_records_text_answer_and_costs(gen_cfg, run_dir):
    result = promptlab.run.run(gen_cfg(), run_dir)
    assert result["status"] == "completed"
    assert result["output_type"] == "generate" and result["primary_metric"] == "exact_match"
    assert result["chance"] is None
    costs = result["costs"]
    assert costs["generated_tokens"] > 0 and costs["generation_seconds"] > 0
    assert costs["generated_tokens_per_second"] == pytest.approx(costs["generated_tokens"] / costs["generation_seconds"])
    rows = read_predictions(run_dir)
    assert [r["idx"] for r in rows] == list(range(6))
    for r in rows:
        assert set(r) >= {"idx", "generation", "answer", "references", "scores", "score"}
        assert r["references"] == [str(r["idx"])]  # the number after '####'
        assert r["score"] == r["scores"]["exact_match"] == float(r["answer"] == r["references"][0])
    assert result["metrics"]["exact_match"] == pytest.approx(sum(r["score"] for r in rows) / len(rows))


def test_prompt_tuning_on_generation_trains_only_the_prompt_and_lowers_target_loss(gen_cfg, run_dir):
    cfg = gen_cfg("method.max_steps=30", "method.lr=1.0", "method.batch_size=4", method="prompt_tuning")
    p = promptlab.run.plan(cfg)
    backbone = promptlab.run.execute.load_backbone(cfg.model, cfg.paths.cache_dir)
    initial = {k: v.clone() for k, v in backbone.model.state_dict().items()}

    def target_loss(model) -> float:
        encoder = Encoder(backbone.tokenizer, p.spec)
        items = [encoder.item(r, train=True) for r in p.train_rows]
        batch = {"prompt_ids": [x["prompt_ids"] for x in items], "target_ids": [x["target_ids"] for x in items]}
        with torch.no_grad():
            return float(readout_for(backbone).loss(model.eval(), batch))

    model = p.method.prepare(backbone, p.spec)
    before = target_loss(model)
    model.train()
    module, encoder = promptlab.run.execute.build_module(p, backbone, model)
    dm = promptlab.run.execute.PromptDataModule(encoder, p.train_rows, [], 4, 4, cfg.seed)
    trainer = promptlab.run.execute.make_trainer(cfg, p.settings, run_dir, [], True)
    trainer.fit(module, datamodule=dm)
    after = target_loss(model)
    # The random 2-layer model barely attends to far-away tokens, so the gain is small, but it is a gain.
    assert after < before - 0.01, (before, after)
    for name, value in backbone.model.state_dict().items():
        assert torch.equal(value, initial[name]), f"backbone weight {name} changed"


def test_trained_methods_on_generation_store_and_reload(gen_cfg, tmp_path):
    for method in ("prompt_tuning", "full_finetune"):
        run_dir = tmp_path / method
        result = promptlab.run.run(gen_cfg(method=method), run_dir)
        assert result["status"] == "completed" and result["costs"]["train_steps"] == 3
        assert result["num_train_examples"] == 8
        if method == "prompt_tuning":
            assert list(load_file(run_dir / "checkpoint" / "adapter_model.safetensors")) == ["prompt_embeddings"]
        evaluated, out = run_eval(run_dir, [])
        assert read_predictions(out) == read_predictions(run_dir)  # reloaded state, same texts and scores
        assert evaluated["metrics"] == result["metrics"] and evaluated["kind"] == "eval"


def test_target_replace_and_training_items(gen_cfg, data_root, tiny_tok):
    cfg = gen_cfg()
    spec = TaskSpec.from_config(cfg.data)
    task = load_task(spec, str(data_root))
    row = next(r for r in task.train if r["answer"].endswith("#### 9"))
    assert spec.target_of(row) == "the answer  is good\nThe answer is 9."
    item = Encoder(tiny_tok, spec).item(row, train=True)
    assert item["target_ids"][-1] == tiny_tok.eos_token_id  # trained to stop
    assert tiny_tok.decode(item["target_ids"][:-1]).endswith("The answer is 9.")


# ---------------------------------------------------------------------------------------- chain of thought


def test_zero_shot_cot_on_a_choice_task_reasons_then_ranks(make_cfg, run_dir):
    cfg = make_cfg("method.max_new_tokens=5", method="zero_shot_cot")
    result = promptlab.run.run(cfg, run_dir)
    assert result["status"] == "completed"
    assert result["method_info"]["display_name"] == "Zero-shot CoT"
    rows = read_predictions(run_dir)
    for r in rows:
        assert isinstance(r["generation"], str) and r["pred"] in (0, 1) and len(r["log_probs"]) == 2
    assert result["costs"]["generated_tokens"] > 0
    assert result["metrics"]["accuracy"] == pytest.approx(sum(r["score"] for r in rows) / len(rows))


def test_cot_prompt_starts_the_answer_with_the_trigger(gen_cfg, tiny_tok):
    cfg = gen_cfg(method="few_shot_cot")
    p = promptlab.run.plan(cfg)
    assert len(p.demos) == 4
    encoder = Encoder(tiny_tok, p.spec, [p.method.demo(p.spec, d) for d in p.demos], p.method.assistant_prefix)
    text = tiny_tok.decode(eval_items(encoder, p.task.eval[:1])[0]["prompt_ids"])
    trigger = cfg.method.trigger
    assert text.endswith(f"<|im_start|>assistant\n{trigger}")
    assert text.count(trigger) == 5  # four worked demonstrations, then the query's own answer
    assert "The answer is" in text and "<<" not in text  # demos show the cleaned worked solution


def test_few_shot_cot_on_a_choice_task_writes_its_demonstrations(make_cfg, run_dir, monkeypatch):
    seen = {}
    real = Method.encoder

    def spy(self, backbone, spec, demos):
        seen["demos"] = list(demos)
        return real(self, backbone, spec, demos)

    monkeypatch.setattr(Method, "encoder", spy)
    cfg = make_cfg("method.num_demos=2", "method.max_new_tokens=4", method="few_shot_cot")
    result = promptlab.run.run(cfg, run_dir)
    assert result["status"] == "completed" and result["num_demos"] == 2
    for _question, answer in seen["demos"]:  # Auto-CoT: trigger, the model's reasoning, cue, the gold label
        assert answer.startswith(cfg.method.trigger) and answer.endswith(("negative.", "positive."))
        assert cfg.method.answer_cue in answer
    costs = result["costs"]
    assert 0 < costs["demo_generated_tokens"] <= 2 * 4 and costs["demo_generation_seconds"] > 0
    _, out = run_eval(run_dir, [])  # greedy: the same demonstrations are written again
    assert read_predictions(out) == read_predictions(run_dir)


def test_few_shot_cot_generation_run(gen_cfg, run_dir):
    result = promptlab.run.run(gen_cfg("method.num_demos=2", method="few_shot_cot"), run_dir)
    assert result["status"] == "completed" and result["num_demos"] == 2
    assert build_method(OmegaConf.load(promptlab.config.CONFIG_DIR / "method" / "few_shot_cot.yaml")).trains is False


# ----------------------------------------------------------------------------------------- promptlab-eval


def test_eval_reproduces_a_prompt_tuning_run_exactly(make_cfg, run_dir):
    promptlab.run.run(make_cfg("method.lr=0.3", method="prompt_tuning"), run_dir)
    result, out = run_eval(run_dir, [])
    assert out.parent == run_dir / "evals" and read_result(run_dir)["kind"] == "train"  # never over the run
    assert read_predictions(out) == read_predictions(run_dir)
    assert result["source_run"] == str(run_dir) and result["kind"] == "eval"


def test_eval_of_a_few_shot_run_redraws_the_same_demos(make_cfg, run_dir):
    promptlab.run.run(make_cfg(method="few_shot"), run_dir)
    _, out = run_eval(run_dir, [])
    assert read_predictions(out) == read_predictions(run_dir)


def test_eval_on_another_task_and_split(make_cfg, run_dir):
    promptlab.run.run(make_cfg(method="zero_shot"), run_dir)
    result, _ = run_eval(run_dir, ["data=rte", "data.eval_limit=4", "data.dev_size=8"])
    assert result["dataset"] == "rte" and result["costs"]["eval_examples"] == 4
    assert result["costs"]["dev_examples"] == 8 and set(result["dev_metrics"]) == set(result["metrics"])


@pytest.mark.parametrize(("setup", "match"), [("missing", "no readable run"), ("running", "did not complete"),
                                               ("no_checkpoint", "no checkpoint")])
def test_eval_refuses_runs_it_cannot_evaluate(make_cfg, run_dir, monkeypatch, capsys, setup, match):
    import shutil

    if setup != "missing":
        promptlab.run.run(make_cfg(method="prompt_tuning"), run_dir)
        if setup == "running":
            path = run_dir / "result.json"
            path.write_text(path.read_text().replace('"completed"', '"running"'))
        else:
            shutil.rmtree(run_dir / "checkpoint")
    monkeypatch.setattr(promptlab.run.execute, "load_backbone", lambda *a, **k: pytest.fail("model loaded"))
    assert eval_main([f"run={run_dir}"]) == 2
    err = capsys.readouterr().err
    assert match in err and "fix:" in err


def test_eval_usage_errors(capsys):
    assert eval_main([]) == 2
    assert "run=" in capsys.readouterr().err
    assert eval_main(["--help"]) == 0
