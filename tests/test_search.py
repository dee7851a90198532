"""Three splits, prompt search, meta-prompting, prompt ensembles and nearest-neighbour demonstrations, on the
tiny model: choices are made on dev only, the record says what was chosen, bad settings fail before the model."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys

import numpy as np
import pytest
from conftest import (
    compose_config,
    config_names,
    data_overrides,
    make_data_root,
    read_predictions,
    read_result,
    sst2_rows,
    subprocess_env,
    write_jsonl,
)

import promptlab.run.execute
import promptlab.run.planning
from promptlab import search
from promptlab.errors import ConfigError
from promptlab.evaluation.ensemble import combine
from promptlab.run import plan, run
from promptlab.search import SearchSpec, compiler
from promptlab.tasks import load_task
from promptlab.tasks.loading import input_text
from promptlab.tasks.spec import TaskSpec


@pytest.fixture
def root(tmp_path):
    """sst2/rte with 12 training examples per class (dev, 8 rows, is carved out of them), 10 eval examples."""
    return make_data_root(tmp_path / "data", train_per_class=12)


@pytest.fixture
def cfg_of(tmp_path, root):
    def make(*overrides: str, method: str = "zero_shot"):
        return compose_config(["model=tiny_random", f"method={method}", f"paths.data_root={root}",
                               f"paths.cache_dir={tmp_path / 'cache'}", "logger=none", "data.k_shot=3",
                               "data.dev_size=8", "eval_batch_size=8", *overrides])

    return make


# ---- three splits ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("budget", [["data.k_shot=3"], ["data.k_shot=null", "data.train_size=7"],
                                    ["data.k_shot=null", "data.train_size=null"]])
@pytest.mark.parametrize("seed", [0, 1])
def test_dev_train_and_eval_are_disjoint_for_every_budget(cfg_of, budget, seed):
    p = plan(cfg_of("search=templates", f"seed={seed}", *budget, method="few_shot"))
    dev, sample, ev = p.task.dev, p.pool, p.task.eval
    assert len(dev) == 8 and sample and ev
    ids = lambda rows: {r["idx"] for r in rows}  # noqa: E731
    texts = lambda rows: {input_text(p.spec, r) for r in rows}  # noqa: E731
    assert not ids(dev) & ids(sample) and not texts(dev) & texts(sample)
    assert not texts(dev) & texts(p.task.train)  # nothing the budget could draw is a dev example
    assert not (texts(dev) | texts(p.task.train)) & texts(ev)  # nor an eval example
    assert {json.dumps(d, sort_keys=True) for d in p.demos} <= {json.dumps(r, sort_keys=True) for r in sample}
    assert p.task.sources.keys() == {"train", "validation"}  # eval is its own split


def test_dev_is_fixed_per_seed_whatever_the_method(cfg_of):
    zero = plan(cfg_of("seed=0")).task.dev
    assert plan(cfg_of("search=templates", "seed=0", method="few_shot")).task.dev == zero
    assert plan(cfg_of("seed=0", method="prompt_tuning")).task.dev == zero
    assert plan(cfg_of("seed=5")).task.dev != zero  # another seed carves another dev


def test_a_train_duplicate_of_a_dev_example_is_not_drawn(tmp_path):
    rows = sst2_rows(8)
    rows.append({**rows[0], "idx": 99})  # the same text twice in train
    write_jsonl(tmp_path / "sst2" / "train.jsonl", rows)
    write_jsonl(tmp_path / "sst2" / "validation.jsonl", sst2_rows(2, text_from=100))
    spec = TaskSpec.from_config(compose_config(["data=sst2", "data.dev_size=15"]).data)
    task = load_task(spec, str(tmp_path))
    dev_texts = {input_text(spec, r) for r in task.dev}
    assert all(input_text(spec, r) not in dev_texts for r in task.train)


def test_train_and_dev_rows_that_are_eval_rows_are_dropped(tmp_path):
    train = sst2_rows(10)
    write_jsonl(tmp_path / "sst2" / "train.jsonl", train)
    write_jsonl(tmp_path / "sst2" / "dev32.jsonl", [{**r, "idx": 100 + r["idx"]} for r in train[6:16]])
    write_jsonl(tmp_path / "sst2" / "validation.jsonl", [{**r, "idx": 200 + r["idx"]} for r in train[16:]])
    spec = TaskSpec.from_config(compose_config(["data=sst2", "+data.dev_split=dev32"]).data)
    task = load_task(spec, str(tmp_path))
    evals = {input_text(spec, r) for r in task.eval}
    assert not evals & {input_text(spec, r) for r in task.train + task.dev}
    assert not {input_text(spec, r) for r in task.dev} & {input_text(spec, r) for r in task.train}
    assert task.splits["dropped_overlaps"] == {"train_in_eval": 4, "dev_in_eval": 0, "train_in_dev": 10}
    assert len(task.dev) == 10 and len(task.train) == 6


def test_a_datasets_own_dev_split_is_used(tmp_path, cfg_of, root):
    write_jsonl(root / "sst2" / "dev32.jsonl", sst2_rows(4, start_idx=500, text_from=300))
    p = plan(cfg_of("search=templates", "+data.dev_split=dev32"))
    assert [r["idx"] for r in p.task.dev] == list(range(500, 508))
    assert "dev32" in p.task.sources


# ---- search -----------------------------------------------------------------------------------------------


def test_search_chooses_the_best_dev_candidate_for_each_readout(cfg_of, tmp_path):
    rec = run(cfg_of("search=templates", "calibration=[contextual,batch]"), tmp_path / "run")
    sel = rec["selection"]
    assert rec["status"] == "completed" and sel["split"] == "dev" and sel["dev_examples"] == 8
    cands = sel["candidates"]
    n = len(compose_config(["data=sst2"]).data.templates)
    assert [c["id"] for c in cands] == [f"template {i}" for i in range(n)]
    for readout, key in (("raw", "accuracy"), ("contextual", "accuracy@contextual"), ("batch", "accuracy@batch")):
        best = max(c["dev"][key] for c in cands)
        first_best = next(c["id"] for c in cands if c["dev"][key] == best)  # ties: the task's order
        assert sel["chosen"][readout] == [first_best]
    assert rec["costs"]["search_candidates"] == n
    assert rec["costs"]["search_examples_scored"] == n * (8 + 3)  # dev rows + 3 content-free inputs each
    assert rec["costs"]["search_seconds"] > 0 and rec["costs"]["search_tokens_scored"] > 0
    # each chosen prompt is scored on eval in a pass of its own; a query costs what the headline's prompt cost
    passes, costs = sel["eval_cost"], rec["costs"]
    assert set(passes) == {m for ids in sel["chosen"].values() for m in ids}
    assert sum(v["prompt_tokens"] for v in passes.values()) == costs["eval_prompt_tokens"]
    (head,) = sel["chosen"][rec["headline"]["readout"]]
    n = costs["eval_examples"]
    assert costs["query_prompt_tokens"] == passes[head]["prompt_tokens"] / n
    assert costs["query_seconds"] == pytest.approx(passes[head]["seconds"] / n)


def test_search_never_reads_eval(cfg_of, root, tmp_path, monkeypatch):
    """The choice is the same whatever the eval labels say, and dev is scored before eval is touched."""
    calls = []
    real = compiler.score_all
    monkeypatch.setattr(compiler, "score_all", lambda m, t, b, enc, rows, cf: (calls.append(rows), real(m, t, b, enc,
                                                                                                      rows, cf))[1])
    first = run(cfg_of("search=templates"), tmp_path / "a")
    dev_ids = {r["idx"] for r in plan(cfg_of("search=templates")).task.dev}
    assert {r["idx"] for r in calls[0]} == dev_ids  # dev first, every candidate in that one pass
    flipped = [{**r, "label": 1 - r["label"]} for r in map(json.loads, (root / "sst2" / "validation.jsonl").open())]
    write_jsonl(root / "sst2" / "validation.jsonl", flipped)
    second = run(cfg_of("search=templates"), tmp_path / "b")
    assert second["selection"]["chosen"] == first["selection"]["chosen"]
    assert [c["dev"] for c in second["selection"]["candidates"]] == [c["dev"] for c in first["selection"]["candidates"]]
    assert second["metrics"]["accuracy"] == pytest.approx(1 - first["metrics"]["accuracy"])


def test_search_over_one_template_equals_that_prompt(cfg_of, tmp_path):
    """An ensemble of one prompt is that prompt: the same predictions as a plain run of the template."""
    plain = run(cfg_of("data.template=1", "calibration=[contextual,batch]"), tmp_path / "plain")
    searched = run(cfg_of("search=templates", "search.templates=[1]", "calibration=[contextual,batch]"),
                   tmp_path / "searched")
    assert searched["metrics"] == pytest.approx(plain["metrics"])
    a, b = read_predictions(tmp_path / "plain"), read_predictions(tmp_path / "searched")
    for x, y in zip(a, b, strict=True):
        assert (x["pred"], x["pred@contextual"], x["pred@batch"]) == (y["pred"], y["pred@contextual"], y["pred@batch"])
        assert x["log_probs"] == pytest.approx(y["log_probs"], abs=1e-4)


def test_ensemble_of_one_is_the_member_and_vote_breaks_ties_by_mean():
    s = np.log(np.array([[0.7, 0.3], [0.2, 0.8]]))
    assert combine([s], "mean")[0].tolist() == [0, 1] == combine([s], "vote")[0].tolist()
    a, b = np.log([[0.9, 0.1]]), np.log([[0.4, 0.6]])  # one vote each: the higher mean score wins
    assert combine([a, b], "vote")[0].tolist() == [0]
    assert combine([a, b, b], "vote")[0].tolist() == [1]
    assert combine([a, b, b], "mean")[0].tolist() == [0]  # mean log-prob: 0.9 outweighs two 0.6s


def test_ensemble_combines_the_top_candidates(cfg_of, tmp_path):
    rec = run(cfg_of("search=ensemble", "search.ensemble=2", "search.eval_all=true"), tmp_path / "run")
    cands = {c["id"]: c for c in rec["selection"]["candidates"]}
    chosen = rec["selection"]["chosen"]["raw"]
    assert len(chosen) == 2
    ranked = sorted(cands, key=lambda i: -cands[i]["dev"]["accuracy"])
    assert sorted(chosen) == sorted(ranked[:2]) or {cands[c]["dev"]["accuracy"] for c in chosen} >= {
        cands[ranked[1]]["dev"]["accuracy"]}
    preds = read_predictions(tmp_path / "run")
    assert all(p["prompt"] == " + ".join(chosen) for p in preds)
    assert all(c["eval"] is not None for c in cands.values())  # eval_all: every candidate on eval too
    # each row was read through both members' prompts: both are in prompts.jsonl, the first heads the row
    prompts = {p["prompt_hash"]: p["text"] for p in map(json.loads, (tmp_path / "run" / "prompts.jsonl").open())}
    for p in preds:
        assert len(p["prompt_hashes"]) == 2 and p["prompt_hash"] == p["prompt_hashes"][0]
        for member, h in zip(chosen, p["prompt_hashes"], strict=True):
            assert reads(prompts[h], cands[member]["template"])
        assert len(set(p["prompt_hashes"])) == 2


def test_search_progress_says_which_prompt_it_scores(cfg_of, tmp_path, caplog, monkeypatch):
    """In a log, a prompt search's prediction passes are labelled as the search ("search on dev: prompt 3/5"),
    not as evaluation batches; its rows' prompts are the chosen candidate's."""
    monkeypatch.setenv("PROMPTLAB_PROGRESS_EVERY", "0")
    caplog.set_level(logging.INFO, logger="promptlab")
    rec = run(cfg_of("search=templates"), tmp_path / "run")
    lines = [r.getMessage() for r in caplog.records if " · batch " in r.getMessage()]
    n = rec["costs"]["search_candidates"]
    for k in range(1, n + 1):
        assert any(line.startswith(f"search on dev: prompt {k}/{n} · batch ") for line in lines), k
    assert any(line.startswith("eval of the chosen prompt") for line in lines)
    assert not [line for line in lines if line.startswith("eval · batch")]  # every pass says what it is
    (raw,) = rec["selection"]["chosen"]["raw"]
    template = next(c["template"] for c in rec["selection"]["candidates"] if c["id"] == raw)
    prompts = {p["prompt_hash"]: p["text"] for p in map(json.loads, (tmp_path / "run" / "prompts.jsonl").open())}
    assert all(reads(prompts[p["prompt_hash"]], template) for p in read_predictions(tmp_path / "run"))


def test_the_terminal_bar_shows_what_the_batch_is_for():
    """In a terminal the prediction bar's description is the pass's label, not "Predicting DataLoader 0"."""
    import io

    from tqdm import tqdm

    from promptlab.progress import StepBar, current_label, labelled

    bar = StepBar()
    bar._current_eval_dataloader_idx = 0  # the same dataloader: Lightning's own hook leaves the bar alone
    bar.predict_progress_bar = tqdm(total=4, file=io.StringIO())
    with labelled("search on dev"):
        outer = current_label()
        with labelled(lambda batch: f"{outer}: prompt {batch['idx'][0]}/3"):
            bar.on_predict_batch_start(None, None, {"idx": [2, 2]}, 0)
    assert bar.predict_progress_bar.desc.removesuffix(": ") == "search on dev: prompt 2/3"  # tqdm adds ": "
    bar.on_predict_batch_start(None, None, {"idx": [0]}, 0)  # outside any label: evaluation
    assert bar.predict_progress_bar.desc.removesuffix(": ") == "eval" == current_label()


def reads(prompt: str, template: str) -> bool:
    """Whether a rendered prompt holds every fixed part of ``template`` (the text around its {fields})."""
    return all(part.strip() in prompt for part in re.split(r"\{[^{}]*\}", template) if part.strip())


def test_instructions_are_candidates(cfg_of, tmp_path):
    rec = run(cfg_of("search=templates", "search.templates=[]",
                     "search.instructions=['Is this review positive or negative? {not a field}']"), tmp_path / "run")
    (cand,) = rec["selection"]["candidates"]
    assert cand["id"] == "instruction 0" and cand["text"].endswith("{not a field}")
    assert cand["template"] == "Is this review positive or negative? {{not a field}}\n\n{sentence}"


def test_meta_prompting_runs_end_to_end_with_generation(cfg_of, tmp_path):
    rec = run(cfg_of("search=ape", "search.propose=3", "search.max_new_tokens=8"), tmp_path / "run")
    sel, costs = rec["selection"], rec["costs"]
    assert rec["status"] == "completed" and len(sel["proposals"]) == 3
    proposed = [c for c in sel["candidates"] if c["id"].startswith("proposed")]
    assert len(proposed) == len({search.clean_instruction(t) for t in sel["proposals"]} - {""})
    assert all(c["dev"] for c in sel["candidates"])
    assert costs["search_generated_tokens"] > 0 and costs["search_proposal_seconds"] > 0
    assert costs["search_candidates"] == len(compose_config(["data=sst2"]).data.templates) + len(proposed)


def test_meta_prompting_is_reproducible(cfg_of, tmp_path):
    a = run(cfg_of("search=ape", "search.propose=2", "search.max_new_tokens=6"), tmp_path / "a")
    b = run(cfg_of("search=ape", "search.propose=2", "search.max_new_tokens=6"), tmp_path / "b")
    assert a["selection"]["proposals"] == b["selection"]["proposals"]


def test_a_proposer_model_of_its_own(cfg_of, tmp_path):
    rec = run(cfg_of("search=ape", "search.propose=2", "search.max_new_tokens=4", "+model@search.proposer=tiny_random",
                     "search.proposer.init_seed=7"), tmp_path / "run")
    assert rec["status"] == "completed" and rec["costs"]["search_proposer_load_seconds"] > 0


def test_clean_instruction():
    assert search.clean_instruction('\n"Instruction: Say positive or negative."\nmore') == "Say positive or negative."
    assert search.clean_instruction("  \n ") == ""


def test_search_on_a_generation_task_chooses_by_its_metric(tmp_path):
    from conftest import write_jsonl as w

    rows = [{"question": f"what is {i} plus {i}", "answer": f"#### {2 * i}"} for i in range(15)]
    w(tmp_path / "data" / "gsm8k" / "train.jsonl", rows[3:])
    w(tmp_path / "data" / "gsm8k" / "test.jsonl", rows[:3])
    cfg = compose_config(["model=tiny_random", "data=gsm8k", f"paths.data_root={tmp_path / 'data'}",
                          f"paths.cache_dir={tmp_path / 'cache'}", "logger=none", "data.dev_size=8",
                          "data.generation.max_new_tokens=4", "search=templates",
                          "search.instructions=['Solve it.']"])
    rec = run(cfg, tmp_path / "run")
    assert rec["status"] == "completed", rec.get("error")
    assert rec["selection"]["chosen"] == {"raw": [rec["selection"]["chosen"]["raw"][0]]}
    assert len(rec["selection"]["candidates"]) == len(cfg.data.templates) + 1


# ---- kNN demonstrations -----------------------------------------------------------------------------------


def test_knn_demos_are_the_nearest_training_examples(cfg_of, tmp_path):
    cfg = cfg_of("method.demo_selection=knn", "method.num_demos=2", method="few_shot")
    p = plan(cfg)
    assert p.demos == p.pool  # kNN draws from the whole training sample
    backbone = promptlab.run.execute.load_backbone(cfg.model, cfg.paths.cache_dir)
    model = p.method.prepare(backbone, p.spec)
    module, encoder = promptlab.run.execute.build_module(p, backbone, model)
    query = p.pool[3]
    turns = encoder.demos(query)
    assert len(turns) == 2
    assert turns[-1][0].endswith(query["sentence"])  # a training example is its own nearest neighbour
    rec = run(cfg, tmp_path / "run")
    assert rec["status"] == "completed" and rec["costs"]["demo_selection_seconds"] > 0 and rec["num_demos"] == 2


# ---- bad input, before the model loads --------------------------------------------------------------------


@pytest.mark.parametrize(("overrides", "method", "match"), [
    (["search=templates", "data=dialogsum", "data.k_shot=null", "calibration=[batch]"], "zero_shot",
     "needs a choice task"),
    (["search=ape", "search.propose=0"], "zero_shot", "search.propose=0"),
    (["search=templates", "search.templates=[]"], "zero_shot", "no candidates"),
    (["search=templates", "search.templates=[7]"], "zero_shot", "search.templates"),
    (["search=templates", "search.templates=0", "search.instructions=[Classify.]"], "zero_shot", "search.templates"),
    (["search=templates", "search.templates=null"], "zero_shot", "search.templates"),
    (["search=templates", "search.instructions=Classify"], "zero_shot", "search.instructions"),
    (["search=ape", "search.meta_prefix=3"], "zero_shot", "search.meta_prefix"),
    (["search=templates", "data.dev_size=24"], "zero_shot", "data.dev_size=24"),
    (["search=templates", "data.dev_size=20", "data.k_shot=3"], "few_shot", "dev"),
    (["search=templates", "+data.dev_split=train"], "zero_shot", "dev_split=train is also the training split"),
    (["search=templates", "data.eval_split=dev"], "zero_shot", "would report on the examples every choice"),
    (["search=ensemble", "search.ensemble=0"], "zero_shot", "search.ensemble=0 is not a whole number >= 1"),
    (["search=ensemble", "search.ensemble=9"], "zero_shot", "only 5 candidates"),
    (["search=templates", "search.combine=max"], "zero_shot", "search.combine"),
    (["search=templates", "search.demo_draws=3"], "zero_shot", "demo_draws"),
    (["search=templates", "search.demo_draws=2", "method.demo_selection=knn", "method.num_demos=2"], "few_shot",
     "demo_draws"),
    (["search=templates", "search.demo_draws=0", "method.num_demos=2"], "few_shot", "demo_draws"),
    (["search=templates"], "prompt_tuning", "trains"),
    (["method.demo_selection=knn", "method.num_demos=7"], "few_shot", "nearest neighbours"),
    (["method.demo_selection=similar"], "few_shot", "demo_selection"),
    (["search=ape", "search.meta_examples=40"], "zero_shot", "meta_examples=40"),
])
def test_bad_search_settings_fail_before_the_model_loads(cfg_of, tmp_path, monkeypatch, overrides, method, match):
    monkeypatch.setattr(promptlab.run.execute, "load_backbone", lambda *a, **k: pytest.fail("the model was loaded"))
    with pytest.raises(ConfigError, match=match):
        run(cfg_of(*overrides, method=method), tmp_path / "run")


def test_an_ensemble_on_a_generation_task_is_refused():
    cfg = compose_config(["search=ensemble", "search.ensemble=2", "data=dialogsum"])
    with pytest.raises(ConfigError, match="generate task"):
        SearchSpec.from_config(cfg.search, TaskSpec.from_config(cfg.data), 64)


@pytest.mark.parametrize("option", config_names("search"))
@pytest.mark.parametrize("dataset", config_names("data"))
def test_every_search_option_composes_with_every_task(option, dataset, tmp_path):
    cfg = compose_config([f"search={option}", f"data={dataset}", *data_overrides(dataset, tmp_path)])
    spec = TaskSpec.from_config(cfg.data)
    if cfg.search.ensemble > 1 and (spec.output_type != "choice" or cfg.search.ensemble > len(spec.templates)):
        with pytest.raises(ConfigError):
            SearchSpec.from_config(cfg.search, spec, 64)
        return
    s = SearchSpec.from_config(cfg.search, spec, 64)
    assert s.templates == list(range(len(spec.templates)))
    assert spec.inputs_template and "{" in spec.inputs_template


def test_budget_that_does_not_fit_after_the_dev_carve_out_names_dev(cfg_of):
    with pytest.raises(ConfigError, match="dev") as err:
        plan(cfg_of("search=templates", "data.dev_size=20", "data.k_shot=3", method="few_shot"))
    assert "k_shot" in str(err.value.problem) + str(err.value.fix)


def test_read_result_has_selection(cfg_of, tmp_path):
    run(cfg_of("search=templates"), tmp_path / "run")
    assert read_result(tmp_path / "run")["selection"]["chosen"]["raw"]


# ---- the report: sensitivity and seed ensembles -----------------------------------------------------------


def test_a_template_sweep_produces_the_sensitivity_table(cfg_of, root, tmp_path):
    """A real Hydra multirun over templates and seeds, then promptlab-report: the sensitivity table's spread is
    the runs' own accuracies; a search run beside it reports its candidates and its choice."""
    from promptlab.report.cli import write_report
    from promptlab.report.sensitivity import sensitivity

    proc = subprocess.run(
        [sys.executable, "-m", "promptlab.train", "-m", "model=tiny_random", "logger=none", "method=few_shot",
         "method.num_demos=2", "data.k_shot=3", "calibration=[batch]", "data.template=0,1,2", "seed=0,1",
         "data.dev_size=8",
         f"paths.data_root={root}", f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.sweep.dir={tmp_path / 'runs' / 'sweep'}"],
        env=subprocess_env(), stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    scores = [json.loads(f.read_text())["metrics"]["accuracy"] * 100
              for f in (tmp_path / "runs" / "sweep").glob("*/result.json")]
    assert len(scores) == 6
    run(cfg_of("search=templates", "search.eval_all=true"), tmp_path / "runs" / "searched")
    report = write_report(tmp_path / "runs")
    text = (report.out / "sensitivity.md").read_text()
    assert "Prompt sensitivity" in text and "— (no dev choice)" in text and "Prompt sensitivity" in report.stdout
    rows = sensitivity(report.runs)
    sweep = rows[(rows["method"] == "few_shot") & (rows["readout"] == "raw")].iloc[0]  # a sweep: no choice made
    assert (sweep["n_prompts"], sweep["n_seeds"]) == (3, 2)
    assert (sweep["min"], sweep["median"], sweep["max"]) == pytest.approx(
        (min(scores), float(np.median(scores)), max(scores)))
    searched = rows[(rows["method"] == "zero_shot") & rows["readout"].str.startswith("raw")].iloc[0]
    rec = read_result(tmp_path / "runs" / "searched")
    evals = [c["eval"]["accuracy"] * 100 for c in rec["selection"]["candidates"]]
    assert searched["spread_on"] == "eval" and searched["max"] == pytest.approx(max(evals))
    assert searched["chosen"] == pytest.approx(rec["metrics"]["accuracy"] * 100)
    chosen_text = rec["selection"]["candidates"][int(rec["selection"]["chosen"]["raw"][0].split()[-1])]["text"]
    assert searched["chosen_prompt"].startswith(chosen_text.splitlines()[0][:40])


def test_seed_ensembles_combine_the_saved_answer_scores(tmp_path, root):
    from promptlab.report.ensembles import seed_ensembles
    from promptlab.report.records import load_runs

    base = ["model=tiny_random", "method=prompt_tuning", f"paths.data_root={root}", "logger=none",
            f"paths.cache_dir={tmp_path / 'cache'}", "data.k_shot=2", "method.max_steps=2", "method.batch_size=4",
            "data.dev_size=8"]
    for seed in (0, 1, 2):
        run(compose_config([*base, f"seed={seed}"]), tmp_path / "runs" / f"s{seed}")
    (row,) = seed_ensembles(load_runs(tmp_path / "runs")).to_dict("records")
    preds = [read_predictions(tmp_path / "runs" / f"s{seed}") for seed in (0, 1, 2)]
    labels = np.array([p["label"] for p in preds[0]])
    logp = np.mean([[p["log_probs"] for p in member] for member in preds], axis=0)
    assert row["k"] == 3 and row["mean"] == pytest.approx((logp.argmax(1) == labels).mean() * 100)
    singles = [np.mean([p["pred"] == p["label"] for p in member]) * 100 for member in preds]
    assert row["member_mean"] == pytest.approx(np.mean(singles)) and row["member_best"] == pytest.approx(max(singles))
    assert row["train_seconds"] == pytest.approx(sum(read_result(tmp_path / "runs" / f"s{s}")["costs"]["train_seconds"]
                                                     for s in (0, 1, 2)))


def test_demonstration_draws_are_candidates_chosen_on_dev(cfg_of, tmp_path):
    """search.demo_draws: each prompt with each of N seeded demonstration sets (the run's own first), chosen on
    dev like a template (DSPy's random search over demonstration sets)."""
    cfg = cfg_of("search=templates", "search.templates=[0,1]", "search.demo_draws=3", "method.num_demos=2",
                 method="few_shot")
    p = plan(cfg)
    draws = promptlab.run.planning.demo_draws(p)
    assert len(draws) == 3 and draws[0] == p.demos
    assert len({tuple(r["idx"] for r in d) for d in draws}) == 3  # three different sets from the same sample
    sample = {r["idx"] for r in p.pool}
    assert all({r["idx"] for r in d} <= sample for d in draws)
    rec = run(cfg, tmp_path / "run")
    sel = rec["selection"]
    assert [c["id"] for c in sel["candidates"]] == [f"template {t} · demos {d}" for t in (0, 1) for d in range(3)]
    assert sel["demo_sets"] == [[r["idx"] for r in d] for d in draws]
    best = max(c["dev"]["accuracy"] for c in sel["candidates"])
    assert sel["chosen"]["raw"] == [next(c["id"] for c in sel["candidates"] if c["dev"]["accuracy"] == best)]
    assert rec["costs"]["search_candidates"] == 6
