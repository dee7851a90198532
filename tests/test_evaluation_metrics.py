"""The metric registry: values equal the reference libraries', normalisation, errors that say what to do."""

from __future__ import annotations

import subprocess
import sys

import pytest
import sacrebleu
from rouge_score.rouge_scorer import RougeScorer
from sklearn.metrics import accuracy_score, f1_score

from promptlab.errors import ConfigError
from promptlab.evaluation import metrics
from promptlab.evaluation.metrics import check_metric, compute_metrics, get_metric, normalize_answer

PREDS = ["the cat sat on the mat", "a quick brown fox jumps", "hello there", ""]
REFS = [
    ["the cat is on the mat", "there is a cat on the mat"],
    ["the quick brown fox jumped over the dog"],
    ["hello there", "hi", "greetings"],
    ["nothing to say"],
]

# ---- choice metrics -------------------------------------------------------------------------------------


def test_accuracy_and_macro_f1_match_sklearn():
    refs = [0, 1, 2, 2, 1, 0, 2, 1]
    preds = [0, 2, 2, 1, 1, 0, 0, 1]
    agg, rows = compute_metrics(["accuracy", "macro_f1"], preds, refs, num_classes=3)
    assert agg["accuracy"] == pytest.approx(accuracy_score(refs, preds))
    assert agg["macro_f1"] == pytest.approx(f1_score(refs, preds, average="macro"))
    assert [r["accuracy"] for r in rows] == [float(p == r) for p, r in zip(preds, refs, strict=True)]
    assert [r["macro_f1"] for r in rows] == [r["accuracy"] for r in rows]  # bootstrap uses correctness


def test_macro_f1_leaves_out_absent_classes_and_counts_invalid_predictions_wrong():
    refs, preds = [0, 0, 1, 1], [0, 1, 1, -1]  # class 2 never occurs; -1: the answer matched no choice
    value, per_example = metrics.macro_f1(preds, refs, num_classes=3)
    assert value == pytest.approx(f1_score(refs, preds, labels=[0, 1], average="macro"))
    assert per_example == [1.0, 0.0, 1.0, 0.0]


# ---- exact match ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("pred", "ref"), [
    ("72", "72"), ("72.0", "72"), ("72.00", "72"), ("$72", "72"), ("1,000", "1000"),
    ("$1,234,567.50", "1234567.5"),
    ("18.", "18"), ("  Paris ", "paris"), ("The  Answer", "the answer"), ("-3.50", "-3.5"),
])
def test_exact_match_normalisation_matches(pred, ref):
    assert normalize_answer(pred) == normalize_answer(ref)
    assert metrics.exact_match([pred], [[ref]])[0] == 1.0


@pytest.mark.parametrize(("pred", "ref"), [
    ("72", "720"), ("7.2", "72"), ("18 apples", "18"), ("1,2", "12"), ("", "0"),
])
def test_exact_match_normalisation_keeps_different_answers_apart(pred, ref):
    assert metrics.exact_match([pred], [[ref]])[0] == 0.0


def test_exact_match_is_true_when_any_reference_matches():
    value, per_example = metrics.exact_match(["18", "paris", "x"], [["17", "18.0"], "Paris", ["y", "z"]])
    assert per_example == [1.0, 1.0, 0.0]
    assert value == pytest.approx(2 / 3)


# ---- ROUGE ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rouge_type", ["rouge1", "rouge2", "rougeL"])
def test_rouge_equals_rouge_score_best_reference(rouge_type):
    scorer = RougeScorer([rouge_type], use_stemmer=True)
    expected = [max(scorer.score(r, p)[rouge_type].fmeasure for r in refs)
                for p, refs in zip(PREDS, REFS, strict=True)]
    value, per_example = get_metric(rouge_type).compute(PREDS, REFS)
    assert per_example == pytest.approx(expected)
    assert value == pytest.approx(sum(expected) / len(expected))


def test_multi_reference_rouge_picks_the_best_reference():
    pred = ["the cat sat on the mat"]
    _, [with_both] = metrics._rouge("rougeL", pred, [["dogs bark loudly", "the cat sat on the mat"]])
    _, [worst_only] = metrics._rouge("rougeL", pred, [["dogs bark loudly"]])
    assert with_both == pytest.approx(1.0)
    assert worst_only == pytest.approx(0.0)


# ---- chrF and BLEU --------------------------------------------------------------------------------------


def _streams(refs):
    width = max(len(r) for r in refs)
    return [[r[i] if i < len(r) else None for r in refs] for i in range(width)]


def test_chrf_and_bleu_equal_sacrebleu_with_uneven_reference_counts():
    agg, rows = compute_metrics(["chrf", "bleu"], PREDS, REFS)
    assert agg["chrf"] == pytest.approx(sacrebleu.corpus_chrf(PREDS, _streams(REFS)).score / 100)
    assert agg["bleu"] == pytest.approx(sacrebleu.corpus_bleu(PREDS, _streams(REFS)).score / 100)
    assert [r["chrf"] for r in rows] == pytest.approx([sacrebleu.sentence_chrf(p, rs).score / 100
                                                       for p, rs in zip(PREDS, REFS, strict=True)])
    assert [r["bleu"] for r in rows] == pytest.approx([sacrebleu.sentence_bleu(p, rs).score / 100
                                                       for p, rs in zip(PREDS, REFS, strict=True)])
    assert all(0 <= v <= 1 for row in rows for v in row.values()) and all(0 <= v <= 1 for v in agg.values())


def test_corpus_chrf_scores_each_example_against_its_own_references_only():
    # Padding a short reference list with a copy of its own reference changes nothing (best match per
    # example); padding with another example's text would.
    padded = [refs + [refs[0]] * (3 - len(refs)) for refs in REFS]
    for name in ("chrf", "bleu"):
        metric = get_metric(name)
        assert metric.compute(PREDS, REFS)[0] == pytest.approx(metric.compute(PREDS, padded)[0])


def test_single_string_references_count_as_one_reference():
    assert get_metric("chrf").compute(["le chat"], ["le chat"])[0] == pytest.approx(1.0)


# ---- compute_metrics, registry --------------------------------------------------------------------------


def test_compute_metrics_gives_one_dict_per_example():
    agg, rows = compute_metrics(["exact_match", "rougeL"], ["hello there", "x"], [["hello there"], ["y"]])
    assert set(agg) == {"exact_match", "rougeL"} and len(rows) == 2
    assert rows[0] == {"exact_match": 1.0, "rougeL": pytest.approx(1.0)}


def test_compute_metrics_rejects_mismatched_or_empty_inputs():
    with pytest.raises(ValueError, match="2 predictions but 1"):
        compute_metrics(["accuracy"], [0, 1], [0])
    with pytest.raises(ValueError, match="no examples"):
        compute_metrics(["accuracy"], [], [])


def test_register_metric_adds_a_metric(monkeypatch):
    monkeypatch.setattr(metrics, "_REGISTRY", dict(metrics._REGISTRY))

    @metrics.register_metric("length_ok", higher_is_better=False, output_types=("generate",))
    def length_ok(preds, refs, **context):
        values = [float(len(p) <= 3) for p in preds]
        return sum(values) / len(values), values

    check_metric("length_ok", "generate")
    assert get_metric("length_ok").higher_is_better is False
    assert compute_metrics(["length_ok"], ["abc", "abcd"], [["a"], ["b"]])[0] == {"length_ok": 0.5}
    with pytest.raises(ValueError, match="already registered"):
        metrics.register_metric("length_ok")(length_ok)
    with pytest.raises(ValueError, match="output_types"):
        metrics.register_metric("other", output_types=("ranking",))


def test_a_registered_metric_carries_how_reports_show_it(monkeypatch):
    """A new metric is one registration: the report's headers, notes and corpus handling read it from there."""
    from promptlab.report.tables import is_corpus, metric_label, metric_name

    monkeypatch.setattr(metrics, "_REGISTRY", dict(metrics._REGISTRY))
    metrics.register_metric("ter_like", display="TER-like", unit="", corpus=True)(lambda p, r, **c: (0.0, []))
    assert (metric_name("ter_like"), metric_label("ter_like"), is_corpus("ter_like")) == ("TER-like", "TER-like", True)
    assert metric_label("accuracy") == "Accuracy (%)" and metric_label("rougeL") == "ROUGE-L"
    assert not is_corpus("accuracy") and is_corpus("bleu")
    assert metric_label("evaluate:sacrebleu") == "sacrebleu (×100)"  # a Hub metric: its id, x100
    assert metric_label("gone_metric") == "gone_metric (×100)"  # a record's metric this version does not know


# ---- check_metric errors --------------------------------------------------------------------------------


def test_every_built_in_metric_fits_its_output_type():
    for name in ("accuracy", "macro_f1"):
        check_metric(name, "choice")
    for name in ("exact_match", "rouge1", "rouge2", "rougeL", "chrf", "bleu"):
        check_metric(name, "generate")


def test_unknown_metric_names_the_known_ones_and_a_close_match():
    with pytest.raises(ConfigError) as err:
        check_metric("rouge_l", "generate")
    assert "unknown metric 'rouge_l'" in err.value.problem
    assert "did you mean 'rougeL'" in err.value.fix
    assert "accuracy" in err.value.fix and "evaluate:" in err.value.fix
    with pytest.raises(ConfigError, match="unknown metric"):
        get_metric("f1")


def test_metric_of_the_wrong_output_type():
    with pytest.raises(ConfigError) as err:
        check_metric("rougeL", "choice")
    assert "not 'choice'" in err.value.problem and "accuracy, macro_f1" in err.value.fix
    with pytest.raises(ConfigError, match="for a generate task use one of: exact_match"):
        check_metric("accuracy", "generate")


@pytest.mark.parametrize("name", ["", "  ", None, 3])
def test_metric_name_must_be_a_string(name):
    with pytest.raises(ConfigError, match="not a non-empty string"):
        check_metric(name, "choice")


# ---- evaluate: metrics (never downloaded here) ----------------------------------------------------------


def test_evaluate_metric_name_is_parsed():
    assert metrics._parse_evaluate("evaluate:bertscore") == ("bertscore", None)
    assert metrics._parse_evaluate("evaluate:bertscore:f1") == ("bertscore", "f1")
    assert metrics._parse_evaluate("evaluate:someone/my_metric") == ("someone/my_metric", None)
    metric = get_metric("evaluate:bertscore:f1")
    assert metric.name == "evaluate:bertscore:f1" and metric.output_types == ("choice", "generate")
    with pytest.raises(ConfigError, match="names no evaluate module"):
        check_metric("evaluate:", "generate")


def test_evaluate_metric_offline_is_a_config_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError) as err:
        check_metric("evaluate:bertscore", "generate")
    assert "cannot be reached" in err.value.problem
    assert "built-in metrics" in err.value.fix and "rougeL" in err.value.fix


class _FakeModule:
    """Stands in for an ``evaluate`` module: no download."""

    def compute(self, predictions, references):
        hits = [float(p == r[0]) for p, r in zip(predictions, references, strict=True)]
        return {"precision": hits, "f1": sum(hits) / len(hits), "hashcode": "x"}


def test_evaluate_metric_compute_reads_a_number(monkeypatch):
    monkeypatch.setattr(metrics, "_load_evaluate", lambda module_id: _FakeModule())
    preds, refs = ["a", "b"], [["a"], ["c"]]
    assert get_metric("evaluate:fake").compute(preds, refs) == (0.5, [1.0, 0.0])  # first number: list mean
    assert compute_metrics(["evaluate:fake:f1"], preds, refs)[0] == {"evaluate:fake:f1": 0.5}
    with pytest.raises(ConfigError, match="no numeric value under 'hashcode'"):
        get_metric("evaluate:fake:hashcode").compute(preds, refs)


def test_evaluate_values_outside_unit_interval_are_refused():
    with pytest.raises(ConfigError, match=r"score=35.0, not a fraction"):
        metrics._number({"score": 35.0}, None, "evaluate:sacrebleu")


def test_importing_the_registry_loads_no_scoring_library():
    code = ("import sys, promptlab.evaluation.metrics as m; m.check_metric('rougeL', 'generate'); "
            "print(sorted({'rouge_score', 'sacrebleu', 'torch', 'evaluate', 'sklearn'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
