"""``data=custom``: a user's own labelled file with only path, text and label given (string labels, splits carved
with a seed), every mistake one ConfigError naming it, and the one-line messages of task YAMLs without a name or
templates; fixes that name a key the config lacks say ``+data.<key>``, as Hydra needs."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import (
    compose_config,
    custom_csv,
    make_data_root,
    read_predictions,
    read_result,
    sst2_rows,
    subprocess_env,
    write_jsonl,
)

import promptlab.run
import promptlab.run.execute
from promptlab.errors import ConfigError
from promptlab.tasks import TaskSpec, load_task, training_subset
from promptlab.tasks.custom import task_name

COLUMNS = ("data.text=review", "data.label=sentiment")


def custom_cfg(path, *overrides):
    return compose_config(["data=custom", f"data.path={path}", *overrides])


def custom_spec(path, *overrides, columns=COLUMNS):
    return TaskSpec.from_config(custom_cfg(path, *columns, *overrides).data)


def custom_task(path, *overrides, seed=0, columns=COLUMNS):
    return load_task(custom_spec(path, *overrides, columns=columns), None, seed)


@pytest.fixture
def reviews(tmp_path):
    """reviews.csv: 40 rows, labels "negative"/"positive" (8 eval, 8 dev, 24 train when carved)."""
    return custom_csv(tmp_path / "reviews.csv", n_per_class=20)


@pytest.fixture
def run_cfg(tmp_path, reviews):
    """A tiny-model run on reviews.csv given only its path, text and label columns."""

    def _make(*overrides, method="zero_shot"):
        fast = ["method.max_steps=3", "method.batch_size=4"] if method != "zero_shot" else []
        return compose_config(["model=tiny_random", f"method={method}", "logger=none", "eval_batch_size=8",
                               f"paths.cache_dir={tmp_path / 'cache'}", "data=custom", f"data.path={reviews}",
                               *COLUMNS, *fast, *overrides])

    return _make


# ------------------------------------------------------------------------------------------------ runs


def test_zero_shot_run_on_a_csv_with_string_labels(run_cfg, tmp_path):
    result = promptlab.run.run(run_cfg(), tmp_path / "run")
    assert result["status"] == "completed" and result["dataset"] == "reviews" and result["chance"] == 0.5
    assert result["eval_split"] == "eval"
    carved = result["splits"]["carved"]
    assert carved.startswith("carved from reviews.csv (40 rows): eval 8 rows drawn with data.split_seed=0")
    assert "dev 8 rows drawn with seed 0" in carved and carved.endswith("train the other 24")
    assert result["provenance"]["data"]["train"].startswith("reviews.csv sha256:")
    rows = read_predictions(tmp_path / "run")
    assert len(rows) == 8 and {r["pred_name"] for r in rows} <= {"negative", "positive"}


def test_prompt_tuning_run_needs_no_init_text(run_cfg, tmp_path):
    cfg = run_cfg(method="prompt_tuning")
    assert cfg.data.prompt_init_text is None
    result = promptlab.run.run(cfg, tmp_path / "run")
    assert result["status"] == "completed" and result["costs"]["train_steps"] == 3
    assert result["splits"]["carved"].startswith("carved from reviews.csv")


# -------------------------------------------------------------------------------------- spec defaults


def test_defaults_from_path_text_and_label(reviews):
    spec = custom_spec(reviews)
    assert spec.name == "reviews" and spec.output_type == "choice" and spec.label_column == "sentiment"
    assert spec.choices == ["negative", "positive"]  # the train file's labels, sorted
    assert spec.templates[0] == "{review}\n\nAnswer with one of: negative, positive."
    assert spec.prompt_init_text == "Answer with one of: negative, positive."
    assert spec.metrics == ["accuracy", "macro_f1"] and spec.primary_metric == "accuracy"
    assert spec.system_prompt is None and spec.k_shot is None and spec.train_size is None
    task = load_task(spec, None, 0)
    assert {r["sentiment"] for r in task.train + task.dev + task.eval} == {0, 1}  # words became ids
    assert len(training_subset(task, 0)) == len(task.train) == 24  # the whole training part


def test_text_and_label_columns_found_by_name(tmp_path):
    path = tmp_path / "mine.jsonl"
    write_jsonl(path, [{"text": r["sentence"], "label": ("neg", "pos")[r["label"]]} for r in sst2_rows(12)])
    spec = custom_spec(path, columns=())  # data.path alone: columns named text and label
    assert (spec.name, spec.templates[0], spec.choices) == ("mine", "{text}\n\nAnswer with one of: neg, pos.",
                                                            ["neg", "pos"])


def test_several_text_columns_and_given_choices(tmp_path):
    path = tmp_path / "pairs.tsv"
    rows = [f"{r['sentence']}\tthe film\t{r['label']}" for r in sst2_rows(12)]
    path.write_text("premise\thypothesis\tgold\n" + "\n".join(rows) + "\n")
    spec = custom_spec(path, "data.text=[premise,hypothesis]", "data.label=gold", "data.choices=[no,yes]", columns=())
    assert spec.templates[0] == "Premise: {premise}\nHypothesis: {hypothesis}\n\nAnswer with one of: no, yes."
    assert spec.prompt_init_text == "Answer with one of: no, yes."
    task = load_task(spec, None, 0)  # integer labels are ids into data.choices
    assert {r["gold"] for r in task.train} == {0, 1}


def test_a_generation_task(tmp_path):
    path = tmp_path / "qa.parquet"
    import pandas as pd

    pd.DataFrame([{"question": f"say {w} {i}", "answer": w} for i in range(15) for w in ("good", "bad")]).to_parquet(path)
    spec = custom_spec(path, "data.target=answer", columns=("data.text=question",))
    assert spec.output_type == "generate" and spec.target == "{answer}" and spec.templates == ["{question}"]
    assert spec.metrics == ["chrf", "exact_match"] and spec.primary_metric == "chrf" and spec.prompt_init_text
    task = load_task(spec, None, 0)
    assert task.eval[0]["references"] == [task.eval[0]["answer"]]


@pytest.mark.parametrize(("path", "name"), [("reviews.csv", "reviews"), ("my data/Train.csv", "my_data"),
                                            ("x/tickets v2.jsonl", "tickets_v2"), (None, "custom")])
def test_name_is_the_file_stem(path, name):
    assert task_name(path) == name


# ------------------------------------------------------------------------------------------------ splits


def test_same_seed_same_split_and_eval_fixed_across_seeds(reviews):
    a, b, c = custom_task(reviews, seed=3), custom_task(reviews, seed=3), custom_task(reviews, seed=4)
    assert [[r["idx"] for r in s] for s in (a.train, a.dev, a.eval)] == \
           [[r["idx"] for r in s] for s in (b.train, b.dev, b.eval)]
    assert [r["idx"] for r in a.eval] == [r["idx"] for r in c.eval]  # eval: data.split_seed, not the run seed
    assert [r["idx"] for r in a.dev] != [r["idx"] for r in c.dev]
    assert sorted(r["idx"] for r in a.train + a.dev + a.eval) == list(range(40))
    assert [r["idx"] for r in custom_task(reviews, "data.split_seed=1").eval] != [r["idx"] for r in a.eval]


def test_explicit_eval_and_dev_files(tmp_path, reviews):
    held_out = tmp_path / "held_out.csv"
    held_out.write_text("review,sentiment\n" + "".join(f"{r['sentence']},{('negative', 'positive')[r['label']]}\n"
                                                         for r in sst2_rows(5, text_from=100)))
    task = custom_task(reviews, f"data.eval_path={held_out}")
    assert len(task.eval) == 10 and task.splits["carved"].endswith("; eval is held_out.csv")
    assert len(task.dev) == 8 and len(task.train) == 32
    both = custom_task(reviews, f"data.eval_path={held_out}", f"data.dev_path={reviews}")
    assert "carved" not in both.splits and set(both.sources) == {"train", "eval", "dev"}


# ------------------------------------------------------------------------------------- one-line errors


@pytest.mark.parametrize(("overrides", "match"), [
    ((), "data=custom needs your data file"),
    (("data.path=no_such_reviews.csv",), r"data.path=no_such_reviews.csv: no such file"),
])
def test_no_file(overrides, match):
    with pytest.raises(ConfigError, match=match):
        TaskSpec.from_config(compose_config(["data=custom", *overrides]).data)


def test_missing_column_names_the_columns_there_are(reviews):
    with pytest.raises(ConfigError, match=r"reviews.csv has no column 'reveiw' \(data.text\); its columns: id, "
                                          r"review, sentiment") as err:
        custom_spec(reviews, columns=("data.text=reveiw", "data.label=sentiment"))
    assert err.value.fix == "did you mean data.text=review?"
    with pytest.raises(ConfigError, match="has no column 'mood'"):
        custom_spec(reviews, columns=("data.text=review", "data.label=mood"))


def test_integer_labels_need_choices(tmp_path):
    path = write_jsonl(tmp_path / "ids.jsonl", [{"text": r["sentence"], "label": r["label"]} for r in sst2_rows(12)])
    with pytest.raises(ConfigError, match=r"are integer ids \(0, 1\)") as err:
        custom_spec(path, columns=())
    assert err.value.fix == "name each id's answer word, in id order: data.choices=[word0,word1]"
    assert custom_spec(path, "data.choices=[negative,positive]", columns=()).choices == ["negative", "positive"]


def test_unknown_label_is_named(tmp_path, reviews):
    eval_file = tmp_path / "eval.csv"
    eval_file.write_text("id,review,sentiment\n0,an okay film,neutral\n")
    with pytest.raises(ConfigError, match=r"eval.csv row 0: label 'neutral' is not one of the training file's "
                                          r"labels \(negative, positive\)") as err:
        custom_task(reviews, f"data.eval_path={eval_file}")
    assert "data.choices=[negative,positive,neutral]" in err.value.fix
    with pytest.raises(ConfigError, match=r"label 'neutral' is not one of data.choices"):
        custom_task(reviews, f"data.eval_path={eval_file}", "data.choices=[negative,positive]")


def test_too_few_rows_to_carve(tmp_path):
    small = custom_csv(tmp_path / "small.csv", n_per_class=11)  # 22 rows: 8 eval + 8 dev + 8 train needs 24
    with pytest.raises(ConfigError, match=r"small.csv has 22 rows: too few to carve out an eval split \(8 rows\), "
                                          r"a dev split \(8\) and leave 8 to train on") as err:
        custom_task(small)
    assert "add rows (24 at least)" in err.value.fix and "data.eval_path=" in err.value.fix


@pytest.mark.parametrize(("overrides", "match"), [
    (("+data.label_column=sentiment",), "data.label_column is not a key of data=custom"),
    (("+data.labels=sentiment",), r"data=custom has no key\(s\) \['labels'\]"),
    (("data.output_type=ranking",), "output_type='ranking' is unknown"),
    (("data.target=review",), "both data.label=sentiment and data.target=review"),
    (("data.choices=[positive]",), "not a list of two or more"),
])
def test_wrong_keys(reviews, overrides, match):
    with pytest.raises(ConfigError, match=match) as err:
        custom_spec(reviews, *overrides)
    assert err.value.fix


def test_errors_come_before_the_model_loads(run_cfg, tmp_path, monkeypatch):
    monkeypatch.setattr(promptlab.run.execute, "load_backbone", lambda *a, **k: pytest.fail("model loaded"))
    with pytest.raises(ConfigError, match="no column 'reveiw'"):
        promptlab.run.run(run_cfg("data.text=reveiw"), tmp_path / "run")
    assert read_result(tmp_path / "run")["status"] == "failed"


# ------------------------------------------------------------------- task YAMLs without name / templates


SST2_LIKE = {"name": "mine", "output_type": "choice", "source": "local", "local_dir": "sst2", "templates": ["{sentence}"],
             "label_column": "label", "choices": ["negative", "positive"], "metrics": ["accuracy"],
             "primary_metric": "accuracy"}


@pytest.mark.parametrize("missing", ["name", "templates", "output_type"])
def test_a_task_yaml_without_a_required_key(missing):
    with pytest.raises(ConfigError) as err:
        TaskSpec.from_config({k: v for k, v in SST2_LIKE.items() if k != missing})
    assert err.value.problem == f"the data config {'' if missing == 'name' else repr('mine') + ' '}has no {missing}"
    assert err.value.fix.startswith(f"add it to the YAML, e.g. {missing}: ")


def test_cli_prints_one_line_for_a_task_yaml_without_a_name(tmp_path):
    """Before: a 97-line traceback from Hydra (the run dir interpolates data.name)."""
    conf = tmp_path / "my_conf" / "data"
    conf.mkdir(parents=True)
    (conf / "my_task.yaml").write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in SST2_LIKE.items() if k != "name"))
    proc = subprocess.run([sys.executable, "-m", "promptlab.train", "--config-dir", str(tmp_path / "my_conf"),
                           "data=my_task", "model=tiny_random", "logger=none", f"paths.runs_dir={tmp_path / 'runs'}"],
                          capture_output=True, text=True, env=subprocess_env(), timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [
        "promptlab: error: the data config data=my_task has no name",
        "  fix: add it to the YAML, e.g. name: my_task  (what runs, records and reports call the task); or use "
        "data=custom for your own file"]


# ------------------------------------------------------------------------------ the Hydra "+" pitfall


def test_a_fix_names_a_missing_key_with_plus(tmp_path):
    """sst2.yaml has no dev_split: `data.dev_split=...` would fail as typed, `+data.dev_split=...` works."""
    root = make_data_root(tmp_path / "data", train_per_class=4)  # 8 train rows: too few to carve dev out of
    spec = TaskSpec.from_config(compose_config(["data=sst2", "data.dev_size=8"]).data)
    with pytest.raises(ConfigError, match="too few to carve") as err:
        load_task(spec, str(root))
    assert "(+data.dev_split=<split>)" in err.value.fix
    compose_config(["data=sst2", "+data.dev_split=validation2"])  # the fix as typed composes
    spec = TaskSpec.from_config(compose_config(["data=boolq"]).data)  # boolq.yaml has dev_split
    assert spec.key("dev_split") == "data.dev_split" and spec.key("strip_values") == "+data.strip_values"
    assert custom_spec_keys_exist()


def custom_spec_keys_exist() -> bool:
    """Every key a data=custom message tells the user to set is in conf/data/custom.yaml (no + needed)."""
    cfg = compose_config(["data=custom"]).data
    return all(k in cfg for k in ("path", "eval_path", "dev_path", "text", "label", "target", "choices",
                                  "split_seed", "dev_size", "output_type", "templates", "prompt_init_text"))


def test_a_prompt_that_cannot_fit_names_the_key_as_typed(tiny_tok):
    from promptlab.prompts import Encoder

    long = {**SST2_LIKE, "templates": ["word " * 1100 + "{sentence}"]}  # no max_prompt_tokens: 1024 by default
    with pytest.raises(ConfigError, match="the prompt without the example's text") as err:
        Encoder(tiny_tok, TaskSpec.from_config(long)).prompt_ids({"sentence": "good", "label": 1})
    assert err.value.fix.startswith("raise +data.max_prompt_tokens to at least")
    with pytest.raises(ConfigError) as err:
        Encoder(tiny_tok, TaskSpec.from_config({**long, "max_prompt_tokens": 1000})).prompt_ids({"sentence": "good"})
    assert err.value.fix.startswith("raise data.max_prompt_tokens to at least")
