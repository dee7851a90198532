"""The report's verdict (report/verdict.py): the winner is chosen on dev, ties are read off its interval, and the
break-even points are where the total-cost lines cross."""

from __future__ import annotations

import pandas as pd
import pytest

from promptlab.report.verdict import break_even_table, costs, envelope, verdict


def summary(rows: dict[str, dict]) -> tuple[pd.DataFrame, pd.Series]:
    """Summary rows as report.tables.summarize gives them, with only what the verdict reads."""
    base = {"n_seeds": 3, "higher_is_better": True, "dev_score_mean": None, "score_low": None, "score_high": None,
            "tuning_seconds_mean": 0.0, "train_seconds_mean": 0.0, "search_seconds_mean": 0.0,
            "demo_generation_seconds_mean": 0.0, "eval_examples": 100.0, "eval_prompt_tokens_mean": 5000.0}
    frame = pd.DataFrame([{**base, "method": name, **r} for name, r in rows.items()])
    return frame, frame["method"]


def test_envelope_is_the_cheapest_row_as_queries_grow():
    # totals: a = N, c = 500 + 0.5 N, b = 1000 + 0.1 N -> a until 1000, c until 1250, then b
    frame, _ = summary({
        "a": {"score_mean": 80, "eval_seconds_mean": 100.0},
        "b": {"score_mean": 80, "eval_seconds_mean": 10.0, "tuning_seconds_mean": 1000.0},
        "c": {"score_mean": 80, "eval_seconds_mean": 50.0, "search_seconds_mean": 500.0},
    })
    env = envelope(costs(frame), stop=1e6)
    assert [(i, lo, hi) for i, lo, hi in env] == [(0, 1.0, pytest.approx(1000)), (2, pytest.approx(1000),
                                                   pytest.approx(1250)), (1, pytest.approx(1250), 1e6)]


def test_one_off_counts_tuning_search_and_demonstrations_once():
    frame, _ = summary({
        "trained": {"score_mean": 1, "eval_seconds_mean": 1.0, "tuning_seconds_mean": 30.0, "train_seconds_mean": 10.0},
        "searched": {"score_mean": 1, "eval_seconds_mean": 1.0, "search_seconds_mean": 7.0,
                     "demo_generation_seconds_mean": 5.0},  # inside the search's own time
        "auto_cot": {"score_mean": 1, "eval_seconds_mean": 1.0, "demo_generation_seconds_mean": 5.0},
    })
    c = costs(frame)
    assert c["one_off_seconds"].tolist() == [30.0, 7.0, 5.0]
    assert c["query_seconds"].tolist() == [0.01] * 3 and c["query_tokens"].tolist() == [50.0] * 3
    assert c["total_100000"].tolist() == pytest.approx([1030.0, 1007.0, 1005.0])


def test_winner_is_chosen_on_dev_and_ties_by_interval():
    frame, labels = summary({
        "few_shot": {"dev_score_mean": 90, "score_mean": 80, "score_low": 75, "score_high": 85,
                     "eval_seconds_mean": 30.0, "search_seconds_mean": 60.0},
        "lora": {"dev_score_mean": 85, "score_mean": 88, "score_low": 84, "score_high": 92,  # better on eval only
                 "eval_seconds_mean": 5.0, "tuning_seconds_mean": 600.0},
        "zero_shot": {"dev_score_mean": 70, "score_mean": 60, "score_low": 55, "score_high": 65,
                      "eval_seconds_mean": 1.0},
    })
    v = verdict(frame, labels)
    assert v["best"] == 0 and v["on"] == "dev" and v["tied"] == [0, 1]
    # few-shot: 60 + 0.3 N, LoRA: 600 + 0.05 N -> LoRA from N = 2,160; zero-shot is cheaper but not tied
    assert v["cheapest"] == {1_000: 0, 100_000: 1, 10_000_000: 1}
    assert v["text"].startswith("Best on dev: few_shot, 80.0 [75.0, 85.0] on eval (dev 90.0).")
    assert "Not told apart from it: lora (88.0 [84.0, 92.0])." in v["text"] and "zero_shot" not in v["text"]
    assert "few_shot costs least in total below 2.16K queries; lora from 2.16K" in v["text"]
    table = break_even_table(v, labels)
    assert table["Tied with best"].tolist() == ["—", "yes", "no"]
    assert table["Total @1K"].tolist() == ["6.0 min ★", "10.8 min", "10 s"]
    assert table["Per query"].tolist() == ["300 ms", "50 ms", "10 ms"]
    assert table["Tokens / query"].tolist() == ["50"] * 3


def test_lower_is_better_and_no_dev_scores():
    frame, labels = summary({
        "a": {"score_mean": 10, "score_low": 8, "score_high": 12, "eval_seconds_mean": 1.0, "higher_is_better": False},
        "b": {"score_mean": 20, "score_low": 18, "score_high": 22, "eval_seconds_mean": 1.0, "higher_is_better": False},
    })
    v = verdict(frame, labels)
    assert v["best"] == 0 and v["on"] == "eval" and v["tied"] == [0]
    assert "no dev scores recorded" in v["text"] and "Every other row is told apart from it." in v["text"]


def test_a_paired_difference_decides_the_tie_where_there_is_one():
    """Wide intervals overlap (60 examples), but the paired difference on the same examples can still exclude 0:
    then the row is not tied with the best, and is not recommended however cheap it is."""
    frame, labels = summary({
        "zero_shot": {"dev_score_mean": 45, "score_mean": 58, "score_low": 45, "score_high": 71, "eval_seconds_mean": 1.0},
        "lora": {"dev_score_mean": 72, "score_mean": 78, "score_low": 68, "score_high": 89, "eval_seconds_mean": 1.0,
                 "tuning_seconds_mean": 200.0},
    })
    assert verdict(frame, labels)["tied"] == [0, 1]  # no paired comparison: the intervals overlap
    v = verdict(frame, labels, {frozenset(("lora", "zero_shot")): True})
    assert v["best"] == 1 and v["tied"] == [1] and "Every other row is told apart from it." in v["text"]
    assert verdict(frame, labels, {frozenset(("lora", "zero_shot")): False})["tied"] == [0, 1]
