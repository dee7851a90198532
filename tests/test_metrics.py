"""The choice metrics (accuracy, macro-F1 through compute_metrics, as evaluate() calls them) agree with
scikit-learn on random predictions; per-example values are 0/1 correctness."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score

from promptlab.evaluation.metrics import compute_metrics


def classification_metrics(preds, labels, num_classes: int) -> dict[str, float]:
    """Aggregates as evaluate() computes them for a choice task; checks the per-example values on the way."""
    preds, labels = [int(p) for p in preds], [int(y) for y in labels]
    got, per_example = compute_metrics(["accuracy", "macro_f1"], preds, labels, num_classes=num_classes)
    correct = [float(p == y) for p, y in zip(preds, labels, strict=True)]
    assert per_example == [{"accuracy": c, "macro_f1": c} for c in correct]
    return got


def sklearn_metrics(preds, labels) -> dict[str, float]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # UndefinedMetricWarning for a class never predicted
        return {
            "accuracy": accuracy_score(labels, preds),
            "macro_f1": f1_score(labels, preds, average="macro", zero_division=0),
        }


def check(preds, labels, num_classes):
    got = classification_metrics(preds, labels, num_classes)
    want = sklearn_metrics(np.asarray(preds), np.asarray(labels))
    assert set(got) == {"accuracy", "macro_f1"}
    assert all(isinstance(v, float) for v in got.values())
    assert got["accuracy"] == pytest.approx(want["accuracy"], abs=1e-6)
    assert got["macro_f1"] == pytest.approx(want["macro_f1"], abs=1e-6)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("num_classes", [2, 3])
def test_random_predictions(seed, num_classes):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 200))
    labels = rng.integers(0, num_classes, n)
    labels[:num_classes] = np.arange(num_classes)  # every class present
    check(rng.integers(0, num_classes, n), labels, num_classes)


@pytest.mark.parametrize("seed", range(3))
def test_one_class_never_predicted(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 50)
    labels[:2] = [0, 1]
    preds = np.ones(50, dtype=int)  # class 0 never predicted: its F1 is 0 and counts in the mean
    check(preds, labels, 2)
    got = classification_metrics(preds, labels, 2)
    assert got["accuracy"] == pytest.approx(labels.mean())
    p = labels.mean()
    assert got["macro_f1"] == pytest.approx((0 + 2 * p / (1 + p)) / 2, abs=1e-6)


def test_three_classes_one_never_predicted():
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 3, 90)
    preds = rng.choice([0, 2], 90)
    check(preds, labels, 3)


def test_perfect_and_all_wrong():
    labels = [0, 1, 1, 0, 1]
    check(labels, labels, 2)
    assert classification_metrics(labels, labels, 2) == {"accuracy": 1.0, "macro_f1": 1.0}
    wrong = [1 - y for y in labels]
    check(wrong, labels, 2)
    assert classification_metrics(wrong, labels, 2)["accuracy"] == 0.0


def test_class_neither_present_nor_predicted_is_left_out():
    rng = np.random.default_rng(3)
    labels, preds = rng.integers(0, 2, 40), rng.integers(0, 2, 40)  # class 2 of 3 never occurs
    check(preds, labels, 3)
    assert classification_metrics(preds, labels, 3) == classification_metrics(preds, labels, 2)
