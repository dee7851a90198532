"""Loading and validating local JSONL tasks; seeded, balanced sampling; the data module."""

from __future__ import annotations

import json
import socket
from collections import Counter

import pytest
import torch
from conftest import EVAL_TEXT_FROM, compose_config, data_cfg, rte_rows, sst2_rows, task_spec, write_jsonl

from promptlab.data import LengthBuckets, PromptDataModule, collate
from promptlab.errors import ConfigError
from promptlab.prompts import Encoder, encode_answer
from promptlab.tasks import TaskSpec, load_task, sample_demos, training_subset
from promptlab.tasks.sampling import sample_k_shot


def write_task(root, dataset="sst2", train=None, validation=None):
    rows = sst2_rows if dataset == "sst2" else rte_rows
    write_jsonl(root / dataset / "train.jsonl", rows(10) if train is None else train)
    write_jsonl(root / dataset / "validation.jsonl",
                rows(5, text_from=EVAL_TEXT_FROM) if validation is None else validation)
    return root


# --------------------------------------------------------------------------------------------- loading


def load(root, dataset="sst2", *overrides, seed=0):
    """load_task on a shipped data config (validated as a run validates it), with ``data.`` overrides; dev is 8
    rows carved out of train unless an override says otherwise."""
    return load_task(task_spec(dataset, "dev_size=8", *overrides), str(root) if root is not None else None, seed)


@pytest.mark.parametrize("dataset", ["sst2", "rte"])
def test_load_local_jsonl(tmp_path, dataset):
    root = write_task(tmp_path, dataset)
    task = load(root, dataset)
    rows = (sst2_rows if dataset == "sst2" else rte_rows)(10)
    assert len(task.dev) == 8 and len(task.train) == 12 and len(task.eval) == 10
    assert sorted(task.train + task.dev, key=lambda r: r["idx"]) == rows  # dev is carved out of train
    assert task.splits["dev"]["from"] == "8 rows carved out of train with the seed"
    spec = task.spec
    assert spec.num_choices == 2
    assert task.name == spec.name == dataset
    assert spec.prompt_template == data_cfg(dataset).templates[0]
    assert spec.template == 0
    assert spec.choices == list(data_cfg(dataset).choices)
    assert spec.class_names == list(data_cfg(dataset).get("label_names") or data_cfg(dataset).choices)


def test_rows_without_idx_get_their_position(tmp_path):
    rows = [{k: v for k, v in r.items() if k != "idx"} for r in sst2_rows(10)]
    task = load(write_task(tmp_path, train=rows), "sst2")
    both = sorted(task.train + task.dev, key=lambda r: r["idx"])
    assert [r["idx"] for r in both] == list(range(20))
    assert [{k: v for k, v in r.items() if k != "idx"} for r in both] == rows


def test_template_choice(tmp_path):
    root = write_task(tmp_path)
    cfg = data_cfg("sst2", "template=2", "dev_size=8")
    task = load_task(TaskSpec.from_config(cfg), str(root))
    assert task.spec.prompt_template == cfg.templates[2] and task.spec.template == 2


@pytest.mark.parametrize("template", [5, -1, 99])
def test_template_out_of_range(template):
    with pytest.raises(ConfigError, match="data.template"):
        task_spec("sst2", f"template={template}")


@pytest.mark.parametrize("template", ["abc", 1.5])
def test_template_not_an_integer(template):
    """A user mistake must be a ConfigError (clean CLI message), not a TypeError traceback."""
    with pytest.raises(ConfigError, match="data.template"):
        task_spec("sst2", f"template={template}")


def test_missing_file_names_the_path(tmp_path):
    root = tmp_path / "data"
    write_jsonl(root / "sst2" / "train.jsonl", sst2_rows(4))  # validation.jsonl is missing
    with pytest.raises(ConfigError) as info:
        load(root, "sst2", "source=local")
    # the file it looked for, with every extension it accepts
    assert f"{root / 'sst2' / 'validation'}.{{jsonl," in str(info.value)


def test_source_local_without_data_root():
    with pytest.raises(ConfigError, match="data root"):
        load(None, "sst2", "source=local")


def test_missing_column(tmp_path):
    rows = [{"idx": r["idx"], "text": r["sentence"], "label": r["label"]} for r in sst2_rows(4)]
    root = write_task(tmp_path, train=rows)
    with pytest.raises(ConfigError, match="sentence") as info:
        load(root)
    assert "sst2/train" in str(info.value)


def test_missing_rte_column(tmp_path):
    rows = [{k: v for k, v in r.items() if k != "sentence2"} for r in rte_rows(4)]
    root = write_task(tmp_path, "rte", validation=rows)
    with pytest.raises(ConfigError, match="sentence2"):
        load(root, "rte")


@pytest.mark.parametrize("bad_label", [2, -1, 7])
def test_label_out_of_range(tmp_path, bad_label):
    rows = sst2_rows(4)
    rows[3]["label"] = bad_label
    root = write_task(tmp_path, train=rows)
    with pytest.raises(ConfigError, match=f"label {bad_label}"):
        load(root)


@pytest.mark.parametrize("bad_label", ["positive", 0.5, None])
def test_label_not_int(tmp_path, bad_label):
    rows = [{**r, "label": bad_label} for r in sst2_rows(4)]  # whole column, so the JSON parses
    root = write_task(tmp_path, validation=rows)
    with pytest.raises(ConfigError, match="not an integer"):
        load(root)


@pytest.mark.parametrize("drop", ["null", "absent"])
def test_missing_text_value(tmp_path, drop):
    """A row whose text is null/absent must not reach the prompt as the string "None"."""
    rows = sst2_rows(4)
    if drop == "null":
        rows[3]["sentence"] = None
    else:
        del rows[3]["sentence"]
    root = write_task(tmp_path, train=rows)
    with pytest.raises(ConfigError, match="row 3"):
        load(root)


def test_malformed_json(tmp_path):
    root = write_task(tmp_path)
    (root / "sst2" / "validation.jsonl").write_text('{"idx": 0, "sentence": "a", "label": 1}\n\n{not json\n')
    with pytest.raises(ConfigError, match=r"validation.jsonl: line 3 is not valid JSON .*\{not json") as err:
        load(root)
    assert "fix or delete line 3" in err.value.fix


def test_empty_file(tmp_path):
    root = write_task(tmp_path, validation=[])
    with pytest.raises(ConfigError, match="validation.jsonl: the file is empty"):
        load(root)


def test_header_only_csv(tmp_path):
    root = write_task(tmp_path)
    (root / "sst2" / "validation.jsonl").unlink()
    (root / "sst2" / "validation.csv").write_text("idx,sentence,label\n")
    with pytest.raises(ConfigError, match=r"validation.csv: it has a header \(idx,sentence,label\) but no rows"):
        load(root)


def test_hub_source_offline_fails_fast(tmp_path, monkeypatch):
    """Offline, the Hub is never tried (so no 25 s of retries): neither a socket nor load_dataset."""
    import datasets

    def never(*args, **kwargs):
        raise AssertionError("must not try the network when HF_HUB_OFFLINE=1")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket, "create_connection", never)
    monkeypatch.setattr(datasets, "load_dataset", never)
    with pytest.raises(ConfigError, match="Hub") as info:
        load(write_task(tmp_path), "sst2", "source=hub")
    assert "stanfordnlp/sst2" in str(info.value)
    with pytest.raises(ConfigError, match="PROMPTLAB_DATA"):
        load(None, "rte")  # auto with no data root: the Hub, which is unreachable


# -------------------------------------------------------------------------------------------- sampling


def _labels(n_per_class=(7, 5, 9)):
    labels = [c for c, n in enumerate(n_per_class) for _ in range(n)]
    return labels[::2] + labels[1::2]  # interleave a little


def test_sample_k_shot_is_balanced():
    labels = _labels()
    for k in (1, 3, 5):
        idx = sample_k_shot(labels, k, 3, seed=0)
        assert len(idx) == len(set(idx)) == 3 * k
        assert Counter(labels[i] for i in idx) == {0: k, 1: k, 2: k}


def test_sample_k_shot_is_seeded():
    labels = _labels()
    assert sample_k_shot(labels, 4, 3, seed=1) == sample_k_shot(labels, 4, 3, seed=1)
    assert sample_k_shot(labels, 4, 3, seed=1) != sample_k_shot(labels, 4, 3, seed=2)


def test_sample_k_shot_too_large():
    with pytest.raises(ConfigError, match="class 1 has only 5"):
        sample_k_shot(_labels(), 6, 3, seed=0)


def test_training_subset_k_shot(tmp_path):
    root = write_task(tmp_path)
    task = load(root, "sst2", "k_shot=3")
    rows = training_subset(task, seed=0)
    assert Counter(r["label"] for r in rows) == {0: 3, 1: 3}
    assert all(r in task.train for r in rows)
    assert rows == training_subset(task, seed=0)
    assert rows != training_subset(task, seed=1)
    most = min(Counter(r["label"] for r in task.train).values())
    with pytest.raises(ConfigError, match=f"k_shot={most + 1}.*8 rows were carved out"):
        training_subset(load(root, "sst2", f"k_shot={most + 1}"), seed=0)


@pytest.mark.parametrize("k_shot", [-1, 0])
def test_training_subset_non_positive_k_shot(tmp_path, k_shot):
    task = load(write_task(tmp_path), "sst2", f"k_shot={k_shot}")
    with pytest.raises(ConfigError, match="k_shot"):
        training_subset(task, seed=0)


def test_training_subset_train_size(tmp_path):
    root = write_task(tmp_path)
    task = load(root, "sst2", "k_shot=null", "train_size=5")
    rows = training_subset(task, seed=3)
    assert len(rows) == 5
    assert len({r["idx"] for r in rows}) == 5
    assert all(r in task.train for r in rows)
    assert rows == training_subset(task, seed=3)
    assert [r["idx"] for r in rows] != [r["idx"] for r in training_subset(task, seed=4)]
    with pytest.raises(ConfigError, match="train_size=13"):
        training_subset(load(root, "sst2", "k_shot=null", "train_size=13"), seed=0)  # 12 left after dev


def test_training_subset_everything(tmp_path):
    task = load(write_task(tmp_path), "sst2", "k_shot=null")
    assert training_subset(task, seed=0) == task.train


def test_sample_demos_balanced(tmp_path):
    task = load(write_task(tmp_path), "sst2", "k_shot=4", "dev_size=9")  # the seed's carve-out leaves 4 of each
    pool = training_subset(task, seed=0)
    for n in (2, 4, 6):
        demos = sample_demos(pool, task, n, seed=0)
        assert len(demos) == n
        assert Counter(d["label"] for d in demos) == {0: n // 2, 1: n // 2}
        assert len({d["idx"] for d in demos}) == n
        assert all(d in pool for d in demos)
    assert sample_demos(pool, task, 4, seed=5) == sample_demos(pool, task, 4, seed=5)
    assert sample_demos(pool, task, 0, seed=0) == []
    with pytest.raises(ConfigError, match="num_demos=9"):
        sample_demos(pool, task, 9, seed=0)


def test_sample_demos_odd_count_and_unbalanced_pool(tmp_path):
    task = load(write_task(tmp_path))
    pool = [r for r in task.train if r["label"] == 1][:4] + [r for r in task.train if r["label"] == 0][:1]
    demos = sample_demos(pool, task, 4, seed=0)
    assert Counter(d["label"] for d in demos) == {1: 3, 0: 1}  # as balanced as the pool allows
    demos = sample_demos(task.train, task, 3, seed=0)
    assert sorted(Counter(d["label"] for d in demos).values()) == [1, 2]


def test_eval_limit_same_subset_for_every_seed(tmp_path):
    root = write_task(tmp_path, validation=sst2_rows(20, text_from=EVAL_TEXT_FROM))
    subsets = []
    for seed in (0, 1, 2):
        cfg = compose_config(["data.eval_limit=7", "data.k_shot=2", f"seed={seed}", "data.dev_size=8"])
        task = load_task(TaskSpec.from_config(cfg.data), str(root), cfg.seed)
        training_subset(task, cfg.seed)
        subsets.append([r["idx"] for r in task.eval])
    assert len(subsets[0]) == 7 == len(set(subsets[0]))
    assert subsets[0] == subsets[1] == subsets[2]
    assert subsets[0] != list(range(7))  # a random subset, not the head of the file
    assert subsets[0] == sorted(subsets[0])  # file order is kept


def test_eval_limit_larger_than_split(tmp_path):
    task = load(write_task(tmp_path), "sst2", "eval_limit=1000")
    assert len(task.eval) == 10 and task.splits["eval"] == {"split": "validation", "rows": 10, "of": 10}


@pytest.mark.parametrize("limit", [0, -3])
def test_eval_limit_not_positive(tmp_path, limit):
    with pytest.raises(ConfigError, match="eval_limit"):
        load(write_task(tmp_path), "sst2", f"eval_limit={limit}")


# ---------------------------------------------------------------------------------------- data module


def test_datamodule_encodes_and_truncates(tmp_path, tiny_tok):
    root = write_task(tmp_path)
    whole = Encoder(tiny_tok, load(root, "sst2").spec)
    frame = len(whole.prompt_ids({"idx": 0, "sentence": "", "label": 0}))  # the prompt without the review
    task = load(root, "sst2", "k_shot=2", f"max_prompt_tokens={frame + 2}")
    train = training_subset(task, seed=0)
    longer = sum(len(whole.prompt_ids(r)) > frame + 2 for r in train + task.eval)
    encoder = Encoder(tiny_tok, task.spec)
    dm = PromptDataModule(encoder, train, task.eval, batch_size=2, eval_batch_size=4, seed=0)
    dm.setup("fit")
    assert len(dm.train_items) == 4 and len(dm.eval_items) == 10
    assert all(len(x["prompt_ids"]) <= frame + 2 for x in dm.train_items + dm.eval_items)
    assert encoder.truncated == longer > 0
    dm.setup("predict")  # encoded once: a second setup neither re-encodes nor re-counts
    assert encoder.truncated == longer
    # every item carries its answers: the choice words and their token ids as written after the prompt
    choice_ids = [encode_answer(tiny_tok, c) for c in task.spec.choices]
    for item, row in zip(dm.train_items, train, strict=True):
        assert item["idx"] == row["idx"] and item["label"] == row["label"]
        assert item["choices"] == ["negative", "positive"] and item["choice_ids"] == choice_ids
    batch = next(iter(dm.predict_dataloader()))
    assert batch["labels"].tolist() == [x["label"] for x in dm.eval_items[:4]]
    assert batch["prompt_ids"] == [x["prompt_ids"] for x in dm.eval_items[:4]]  # ragged: readouts pad
    assert sorted(int(i) for b in dm.predict_dataloader() for i in b["idx"]) == list(range(10))
    json.dumps(dm.eval_items)  # plain python data


def test_datamodule_untruncated_prompts_and_eval_order(tmp_path, tiny_tok):
    task = load(write_task(tmp_path), "sst2", "k_shot=2")
    encoder = Encoder(tiny_tok, task.spec)
    dm = PromptDataModule(encoder, [], task.eval, batch_size=2, eval_batch_size=4, seed=0)
    dm.setup("predict")
    assert encoder.truncated == 0
    lengths = [len(x["prompt_ids"]) for x in dm.eval_items]
    assert lengths == sorted(lengths, reverse=True)  # longest first
    by_idx = {x["idx"]: x for x in dm.eval_items}
    for row in task.eval:  # the untruncated prompt is exactly the encoder's prompt for that row
        assert by_idx[row["idx"]]["prompt_ids"] == encoder.prompt_ids(row)


def test_train_loader_is_shuffled_with_the_seed(tmp_path, tiny_tok):
    task = load(write_task(tmp_path), "sst2", "k_shot=null")

    def order(seed):
        dm = PromptDataModule(Encoder(tiny_tok, task.spec), task.train, [], batch_size=4, eval_batch_size=4, seed=seed)
        dm.setup("fit")
        return [int(i) for b in dm.train_dataloader() for i in b["idx"]]

    assert sorted(order(0)) == [r["idx"] for r in task.train]
    assert order(0) == order(0)
    assert order(0) != order(1)


def test_collate_keeps_lists_and_stacks_labels():
    items = [{"idx": 3, "prompt_ids": [1, 2, 3], "label": 1, "choice_ids": [[4], [5, 6]]},
             {"idx": 7, "prompt_ids": [1], "label": 0, "choice_ids": [[4], [5, 6]]}]
    batch = collate(items)
    assert set(batch) == {"idx", "prompt_ids", "labels", "choice_ids"}
    assert batch["labels"].tolist() == [1, 0]
    assert batch["idx"] == [3, 7] and batch["prompt_ids"] == [[1, 2, 3], [1]]
    assert batch["choice_ids"] == [[[4], [5, 6]], [[4], [5, 6]]]


# ------------------------------------------------------------------------------ per-example choices (COPA)


def copa_rows(n: int, text_from: int = 0) -> list[dict]:
    return [{"idx": i, "premise": f"the film was long {text_from + i}", "question": "effect",
             "choice1": "we left early", "choice2": "we stayed for more", "label": i % 2} for i in range(n)]


def write_copa(root, validation=None):
    write_jsonl(root / "copa" / "train.jsonl", copa_rows(6))
    write_jsonl(root / "copa" / "dev32.jsonl", copa_rows(8, text_from=100))
    write_jsonl(root / "copa" / "validation.jsonl",
                copa_rows(4, text_from=EVAL_TEXT_FROM) if validation is None else validation)
    return root


def test_per_example_choices_load_and_encode(tmp_path, tiny_tok):
    task = load(write_copa(tmp_path), "copa")
    assert task.spec.num_choices == 2 and len(task.eval) == 4
    assert len(task.dev) == 8 and len(task.train) == 6  # the data's own dev split: train stays whole
    assert task.sources.keys() == {"train", "dev32", "validation"}
    item = Encoder(tiny_tok, task.spec).item(task.eval[1], train=False)
    assert item["choices"] == ["we left early", "we stayed for more"] and item["label"] == 1
    assert item["choice_ids"] == [encode_answer(tiny_tok, c) for c in item["choices"]]


def test_per_example_choice_column_missing(tmp_path):
    rows = [{k: v for k, v in r.items() if k != "choice2"} for r in copa_rows(4)]
    with pytest.raises(ConfigError, match="choice2"):
        load(write_copa(tmp_path, validation=rows), "copa")


@pytest.mark.parametrize("empty", ["", "   "])
def test_per_example_choice_that_is_empty_is_a_config_error(tmp_path, empty):
    """The port of the old 'verbalizer word tokenises to nothing' check to per-example answers."""
    rows = copa_rows(4)
    rows[2]["choice2"] = empty
    with pytest.raises(ConfigError, match="row 2"):
        load(write_copa(tmp_path, validation=rows), "copa")


# ------------------------------------------------------------------------------------ length buckets


def test_length_buckets_are_seeded_and_visit_every_example_once_per_epoch():
    lengths = [(i * 37) % 101 + 5 for i in range(203)]  # 203: the last batch is partial
    sampler = LengthBuckets(lengths, batch_size=8, seed=3, group=4)
    epochs = [list(sampler) for _ in range(3)]
    for batches in epochs:
        assert len(batches) == len(sampler) == 26
        assert sorted(i for b in batches for i in b) == list(range(203))
        assert all(len(b) <= 8 for b in batches)
    assert epochs[0] != epochs[1] != epochs[2]  # a fresh order each epoch
    assert list(LengthBuckets(lengths, 8, seed=3, group=4)) == epochs[0]  # seeded
    assert list(LengthBuckets(lengths, 8, seed=4, group=4)) != epochs[0]

    def padding(batches):
        return sum(len(b) * max(lengths[i] for i in b) - sum(lengths[i] for i in b) for b in batches)

    shuffled = torch.randperm(203, generator=torch.Generator().manual_seed(3)).tolist()
    assert padding(epochs[0]) < padding([shuffled[j:j + 8] for j in range(0, 203, 8)]) / 3


def test_length_buckets_resume_mid_epoch_from_their_state():
    lengths = list(range(50))
    whole = LengthBuckets(lengths, 4, seed=0)
    uninterrupted = list(whole) + list(whole)
    first = LengthBuckets(lengths, 4, seed=0)
    it = iter(first)
    taken = [next(it) for _ in range(5)]
    resumed = LengthBuckets(lengths, 4, seed=0)
    resumed.load_state_dict(first.state_dict())
    assert taken + list(resumed) + list(resumed) == uninterrupted


def test_datamodule_trains_on_length_buckets_unless_told_not_to(tmp_path, tiny_tok):
    root = write_task(tmp_path)
    task = load(root, "sst2", "k_shot=4")
    train = training_subset(task, seed=0)
    dm = PromptDataModule(Encoder(tiny_tok, task.spec), train, [], batch_size=2, eval_batch_size=4, seed=0)
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert isinstance(loader.batch_sampler, LengthBuckets)
    assert sorted(int(i) for b in loader for i in b["idx"]) == sorted(r["idx"] for r in train)
    plain = PromptDataModule(Encoder(tiny_tok, task.spec), train, [], 2, 4, seed=0, bucket=False)
    plain.setup("fit")
    assert not isinstance(plain.train_dataloader().batch_sampler, LengthBuckets)
