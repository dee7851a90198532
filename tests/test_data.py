"""Loading and validating local JSONL tasks; seeded, balanced sampling."""

from __future__ import annotations

import json
import socket
from collections import Counter

import pytest
from conftest import compose_config, rte_rows, sst2_rows, write_jsonl

from promptlab.data import PromptDataModule, load_task, sample_demos, sample_k_shot, training_subset
from promptlab.errors import ConfigError


def data_cfg(dataset="sst2", *overrides):
    return compose_config([f"data={dataset}", *(f"data.{o}" for o in overrides)]).data


def write_task(root, dataset="sst2", train=None, validation=None):
    rows = sst2_rows if dataset == "sst2" else rte_rows
    write_jsonl(root / dataset / "train.jsonl", rows(6) if train is None else train)
    write_jsonl(root / dataset / "validation.jsonl", rows(5) if validation is None else validation)
    return root


# --------------------------------------------------------------------------------------------- loading


@pytest.mark.parametrize("dataset", ["sst2", "rte"])
def test_load_local_jsonl(tmp_path, dataset):
    root = write_task(tmp_path, dataset)
    task = load_task(data_cfg(dataset), str(root))
    expected_train = (sst2_rows if dataset == "sst2" else rte_rows)(6)
    assert task.train == expected_train
    assert len(task.eval) == 10
    assert task.num_classes == 2
    assert task.name == dataset
    assert task.template == data_cfg(dataset).templates[0]
    assert task.template_id == 0
    assert task.verbalizer == list(data_cfg(dataset).verbalizer)


def test_template_choice(tmp_path):
    root = write_task(tmp_path)
    cfg = data_cfg("sst2", "template=2")
    task = load_task(cfg, str(root))
    assert task.template == cfg.templates[2] and task.template_id == 2


@pytest.mark.parametrize("template", [3, -1, 99])
def test_template_out_of_range(tmp_path, template):
    root = write_task(tmp_path)
    with pytest.raises(ConfigError, match="data.template"):
        load_task(data_cfg("sst2", f"template={template}"), str(root))


@pytest.mark.parametrize("template", ["abc", 1.5])
def test_template_not_an_integer(tmp_path, template):
    """A user mistake must be a ConfigError (clean CLI message), not a TypeError traceback."""
    root = write_task(tmp_path)
    with pytest.raises(ConfigError, match="data.template"):
        load_task(data_cfg("sst2", f"template={template}"), str(root))


def test_missing_file_names_the_path(tmp_path):
    root = tmp_path / "data"
    write_jsonl(root / "sst2" / "train.jsonl", sst2_rows(4))  # validation.jsonl is missing
    with pytest.raises(ConfigError) as info:
        load_task(data_cfg("sst2", "source=local"), str(root))
    assert str(root / "sst2" / "validation.jsonl") in str(info.value)


def test_source_local_without_data_root():
    with pytest.raises(ConfigError, match="data root"):
        load_task(data_cfg("sst2", "source=local"), None)


def test_missing_column(tmp_path):
    rows = [{"idx": r["idx"], "text": r["sentence"], "label": r["label"]} for r in sst2_rows(4)]
    root = write_task(tmp_path, train=rows)
    with pytest.raises(ConfigError, match="sentence") as info:
        load_task(data_cfg(), str(root))
    assert "sst2/train" in str(info.value)


def test_missing_rte_column(tmp_path):
    rows = [{k: v for k, v in r.items() if k != "sentence2"} for r in rte_rows(4)]
    root = write_task(tmp_path, "rte", validation=rows)
    with pytest.raises(ConfigError, match="sentence2"):
        load_task(data_cfg("rte"), str(root))


@pytest.mark.parametrize("bad_label", [2, -1, 7])
def test_label_out_of_range(tmp_path, bad_label):
    rows = sst2_rows(4)
    rows[3]["label"] = bad_label
    root = write_task(tmp_path, train=rows)
    with pytest.raises(ConfigError, match=f"label {bad_label}"):
        load_task(data_cfg(), str(root))


@pytest.mark.parametrize("bad_label", ["positive", 0.5, None])
def test_label_not_int(tmp_path, bad_label):
    rows = [{**r, "label": bad_label} for r in sst2_rows(4)]  # whole column, so the JSON parses
    root = write_task(tmp_path, validation=rows)
    with pytest.raises(ConfigError, match="not an integer"):
        load_task(data_cfg(), str(root))


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
        load_task(data_cfg(), str(root))


def test_malformed_json(tmp_path):
    root = write_task(tmp_path)
    (root / "sst2" / "validation.jsonl").write_text('{"idx": 0, "sentence": "a", "label": 1}\n{not json\n')
    with pytest.raises(ConfigError):
        load_task(data_cfg(), str(root))


def test_empty_file(tmp_path):
    root = write_task(tmp_path, validation=[])
    with pytest.raises(ConfigError):
        load_task(data_cfg(), str(root))


def test_hub_source_offline_fails_fast(tmp_path, monkeypatch):
    """Offline, the Hub is never tried (so no 25 s of retries): neither a socket nor load_dataset."""
    import datasets

    def never(*args, **kwargs):
        raise AssertionError("must not try the network when HF_HUB_OFFLINE=1")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket, "create_connection", never)
    monkeypatch.setattr(datasets, "load_dataset", never)
    with pytest.raises(ConfigError, match="Hub") as info:
        load_task(data_cfg("sst2", "source=hub"), str(write_task(tmp_path)))
    assert "stanfordnlp/sst2" in str(info.value)
    with pytest.raises(ConfigError, match="PROMPTLAB_DATA"):
        load_task(data_cfg("rte"), None)  # auto with no data root: the Hub, which is unreachable


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
    task = load_task(data_cfg(), str(write_task(tmp_path)))
    rows = training_subset(task, data_cfg("sst2", "k_shot=3"), seed=0)
    assert Counter(r["label"] for r in rows) == {0: 3, 1: 3}
    assert rows == training_subset(task, data_cfg("sst2", "k_shot=3"), seed=0)
    with pytest.raises(ConfigError, match="k_shot=7"):
        training_subset(task, data_cfg("sst2", "k_shot=7"), seed=0)  # 6 per class


def test_training_subset_negative_k_shot(tmp_path):
    task = load_task(data_cfg(), str(write_task(tmp_path)))
    with pytest.raises(ConfigError, match="k_shot"):
        training_subset(task, data_cfg("sst2", "k_shot=-1"), seed=0)


def test_training_subset_train_size(tmp_path):
    task = load_task(data_cfg(), str(write_task(tmp_path)))
    cfg = data_cfg("sst2", "k_shot=null", "train_size=5")
    rows = training_subset(task, cfg, seed=3)
    assert len(rows) == 5
    assert len({r["idx"] for r in rows}) == 5
    assert all(r in task.train for r in rows)
    assert rows == training_subset(task, cfg, seed=3)
    assert [r["idx"] for r in rows] != [r["idx"] for r in training_subset(task, cfg, seed=4)]
    with pytest.raises(ConfigError, match="train_size=13"):
        training_subset(task, data_cfg("sst2", "k_shot=null", "train_size=13"), seed=0)


def test_training_subset_everything(tmp_path):
    task = load_task(data_cfg(), str(write_task(tmp_path)))
    assert training_subset(task, data_cfg("sst2", "k_shot=null"), seed=0) == task.train


def test_sample_demos_balanced(tmp_path):
    task = load_task(data_cfg(), str(write_task(tmp_path)))
    pool = training_subset(task, data_cfg("sst2", "k_shot=4"), seed=0)
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
    task = load_task(data_cfg(), str(write_task(tmp_path)))
    pool = [r for r in task.train if r["label"] == 1][:4] + [r for r in task.train if r["label"] == 0][:1]
    demos = sample_demos(pool, task, 4, seed=0)
    assert Counter(d["label"] for d in demos) == {1: 3, 0: 1}  # as balanced as the pool allows
    demos = sample_demos(task.train, task, 3, seed=0)
    assert sorted(Counter(d["label"] for d in demos).values()) == [1, 2]


def test_eval_limit_same_subset_for_every_seed(tmp_path):
    root = write_task(tmp_path, validation=sst2_rows(20))
    subsets = []
    for seed in (0, 1, 2):
        cfg = compose_config(["data.eval_limit=7", "data.k_shot=2", f"seed={seed}"])
        task = load_task(cfg.data, str(root))
        training_subset(task, cfg.data, cfg.seed)
        subsets.append([r["idx"] for r in task.eval])
    assert len(subsets[0]) == 7 == len(set(subsets[0]))
    assert subsets[0] == subsets[1] == subsets[2]
    assert subsets[0] != list(range(7))  # a random subset, not the head of the file
    assert subsets[0] == sorted(subsets[0])  # file order is kept


def test_eval_limit_larger_than_split(tmp_path):
    task = load_task(data_cfg("sst2", "eval_limit=1000"), str(write_task(tmp_path)))
    assert len(task.eval) == 10


# ---------------------------------------------------------------------------------------- data module


def test_datamodule_encodes_and_truncates(tmp_path, tiny_tok):
    task = load_task(data_cfg(), str(write_task(tmp_path)))
    train = training_subset(task, data_cfg("sst2", "k_shot=2"), seed=0)
    dm = PromptDataModule(task, tiny_tok, train, [], batch_size=2, eval_batch_size=4, seed=0, max_prompt_tokens=12)
    dm.setup("fit")
    assert len(dm.train_items) == 4 and len(dm.eval_items) == 10
    assert all(len(x["prompt_ids"]) <= 12 for x in dm.train_items + dm.eval_items)
    assert dm.truncated == 14
    batch = next(iter(dm.predict_dataloader()))
    assert batch["labels"].tolist() == [x["label"] for x in dm.eval_items[:4]]
    assert sorted(int(i) for b in dm.predict_dataloader() for i in b["idx"]) == list(range(10))
    json.dumps(dm.eval_items)  # plain python data
