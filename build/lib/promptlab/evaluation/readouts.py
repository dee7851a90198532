"""Readouts of a choice prediction: which answer a row's scores pick, and under what rule.

Every readout is computed for every choice run from the same per-answer numbers (``readout.choice.choice_row``),
and each gives a ``<metric>@<readout>`` beside the raw metric:

- ``raw``: the summed answer log-likelihood (lm-evaluation-harness's ``acc``);
- ``per_token``, ``per_char``, ``per_byte``: that sum divided by the answer's length in tokens, characters
  (the harness's ``acc_norm``) or UTF-8 bytes (its ``acc_bytes``): longer answers are not penalised for
  their length;
- ``contextual``, ``batch``: calibrated (``evaluation.calibration``), when the run asks for them.

Which readout heads a row is the task's ``data.readout`` unless the run chooses it on dev (``select_readout``,
the default): the readout with the best dev score, ties going to the task's default (``choose``). The others
stay in the record as sensitivity, never as the headline.

Hand-written: a few lines of array arithmetic over stored scores, which no maintained library packages.
"""

from __future__ import annotations

import numpy as np

from promptlab.evaluation import calibration

RAW = calibration.RAW
LENGTH_NORMS = {"per_token": "answer_tokens", "per_char": "answer_chars", "per_byte": "answer_bytes"}
ORDER = (RAW, *LENGTH_NORMS, *calibration.METHODS)  # tie-break order after the task's default


def metric_key(metric: str, readout: str) -> str:
    """A metric's name in records under a readout: ``accuracy`` (raw), ``accuracy@per_char``."""
    return calibration.metric_key(metric, readout)


def split_key(key: str) -> tuple[str, str]:
    """``accuracy@batch`` -> (accuracy, batch); ``accuracy`` -> (accuracy, raw)."""
    metric, _, readout = key.partition("@")
    return metric, readout or RAW


def available(rows: list[dict], calibrations: tuple[str, ...]) -> tuple[str, ...]:
    """The readouts these choice rows support: raw, the length normalisations when they carry answer lengths
    (rank-scored LM rows do; CLIP's similarity scores do not), and the asked calibrations."""
    norms = tuple(LENGTH_NORMS) if rows and all("answer_logprobs" in r for r in rows) else ()
    return (RAW, *norms, *calibrations)


def scores(rows: list[dict], content_free: list[dict], readout: str) -> np.ndarray:
    """(examples, answers) scores of choice rows under ``readout`` (argmax: the prediction)."""
    log_probs = np.array([r["log_probs"] for r in rows], dtype=np.float64)
    if readout == RAW:
        return log_probs
    if readout in LENGTH_NORMS:
        sums = np.array([r["answer_logprobs"] for r in rows], dtype=np.float64)
        return sums / np.array([r[LENGTH_NORMS[readout]] for r in rows], dtype=np.float64)
    source = np.array([r["log_probs"] for r in content_free], dtype=np.float64) if readout == "contextual" else log_probs
    return calibration.calibrated_scores(log_probs, calibration.prior(source))


def predictions(rows: list[dict], content_free: list[dict], readout: str) -> list[int]:
    return scores(rows, content_free, readout).argmax(axis=1).tolist()


def choose(dev_metrics: dict[str, float], metric: str, readouts: tuple[str, ...], default: str,
           higher_is_better: bool = True) -> str:
    """The readout whose ``metric`` is best on dev; ties (and a missing score) go to ``default``, then ``ORDER``."""
    ranked = sorted(readouts, key=lambda r: (r != default, ORDER.index(r) if r in ORDER else len(ORDER)))
    best, best_value = default if default in readouts else ranked[0], None
    for r in ranked:
        value = dev_metrics.get(metric_key(metric, r))
        if value is None or not np.isfinite(value):
            continue
        if best_value is None or (value > best_value if higher_is_better else value < best_value):
            best, best_value = r, value
    return best
