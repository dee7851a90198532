"""The metric registry: every score a task can name in ``data.metrics``, lm-evaluation-harness style.

A metric is ``fn(preds, refs, **context) -> (aggregate, per_example)``, both fractions in [0, 1] (see
``promptlab.schema``). The per-example values feed the paired bootstrap; for corpus metrics (chrF, BLEU)
they are the sentence-level scores, so their mean is not the aggregate.

- ``choice`` tasks: ``preds`` and ``refs`` are choice indices; ``context["num_classes"]`` the number of
  choices. A prediction outside ``0..num_classes-1`` (e.g. -1 for an answer that matched no choice) is
  simply wrong.
- ``generate`` tasks: ``preds`` are answer strings (after the task's filters), ``refs`` one list of
  reference strings per example (a bare string counts as a single reference).
- ``evaluate:<id>[:<key>]`` loads ``evaluate.load(id)`` from the Hub (network needed) and reads ``key``
  (default: the first numeric value) from its result.

Scoring libraries are imported inside the metric functions, so ``check_metric`` stays fast.
"""

from __future__ import annotations

import difflib
import importlib.util
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache, partial
from numbers import Real
from typing import Any, get_args

from promptlab.errors import ConfigError
from promptlab.schema import OutputType

OUTPUT_TYPES: tuple[str, ...] = get_args(OutputType)
EVALUATE_PREFIX = "evaluate:"

Result = tuple[float, list[float]]


@dataclass(frozen=True)
class Metric:
    """A metric and how a report shows it: ``display`` its name in tables and plots, ``unit`` what the x100 value
    is ("%": a proportion of examples; "": a score conventionally quoted 0-100, ROUGE-L; "×100": anything else),
    ``corpus`` whether the aggregate is a corpus score (chrF, BLEU) rather than the mean of the per-example ones."""

    name: str
    higher_is_better: bool
    output_types: tuple[str, ...]
    compute: Callable[..., Result]
    display: str = ""
    unit: str = "×100"
    corpus: bool = False

    @property
    def label(self) -> str:
        """Header / axis label: "Accuracy (%)", "ROUGE-L", "sacrebleu (×100)"."""
        return f"{self.display} ({self.unit})" if self.unit else self.display


_REGISTRY: dict[str, Metric] = {}


def register_metric(name: str, *, higher_is_better: bool = True, output_types: tuple[str, ...] = ("generate",),
                    display: str | None = None, unit: str = "×100",
                    corpus: bool = False) -> Callable[[Callable], Callable]:
    """Register ``fn(preds, refs, **context) -> (aggregate, per_example)`` under ``name``, with how reports show
    it (``Metric``: display name, unit, corpus-level)."""
    bad = [t for t in output_types if t not in OUTPUT_TYPES]
    if bad or not output_types:
        raise ValueError(f"metric {name!r}: output_types {output_types!r} must be a non-empty subset of "
                         f"{OUTPUT_TYPES}")
    if name in _REGISTRY or name.startswith(EVALUATE_PREFIX):
        raise ValueError(f"metric {name!r} is already registered or reserved")

    def decorator(fn: Callable[..., Result]) -> Callable[..., Result]:
        _REGISTRY[name] = Metric(name, higher_is_better, tuple(output_types), fn, display or name, unit, corpus)
        return fn

    return decorator


def known_metrics(output_type: str | None = None) -> list[str]:
    """Names of the built-in metrics (those fitting ``output_type`` if given)."""
    return [n for n, m in _REGISTRY.items() if output_type is None or output_type in m.output_types]


def check_metric(name: str, output_type: str) -> None:
    """Raise ``ConfigError`` unless ``name`` is a metric usable on an ``output_type`` task (no model, no I/O
    except a quick Hub reachability check for ``evaluate:`` metrics)."""
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"metric name {name!r} is not a non-empty string",
                          f"use one of: {', '.join(known_metrics(output_type))}")
    if name.startswith(EVALUATE_PREFIX):
        _check_evaluate(name)
        return
    metric = _REGISTRY.get(name)
    if metric is None:
        close = difflib.get_close_matches(name, _REGISTRY, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ConfigError(f"unknown metric {name!r}",
                          f"{hint}use one of the built-in metrics ({', '.join(known_metrics())}) "
                          f"or evaluate:<hub id> (needs network)")
    if output_type not in metric.output_types:
        kinds = "/".join(metric.output_types)
        raise ConfigError(f"metric {name!r} scores {kinds} tasks, not {output_type!r} ones",
                          f"for a {output_type} task use one of: {', '.join(known_metrics(output_type))}")


def get_metric(name: str) -> Metric:
    """The registered metric, or an ``evaluate:`` metric (loaded on first compute; higher is better)."""
    if isinstance(name, str) and name.startswith(EVALUATE_PREFIX):
        _parse_evaluate(name)
        return Metric(name, True, OUTPUT_TYPES, partial(_evaluate_compute, name), name.removeprefix(EVALUATE_PREFIX))
    if name not in _REGISTRY:
        check_metric(name, OUTPUT_TYPES[0])  # raises the unknown-metric error, with the known names
    return _REGISTRY[name]


def display_metric(name: str) -> Metric:
    """How ``name`` is shown (display name, unit): the registry's entry; a name it does not know (a record from
    another version, a mixture's ``seen_mean``) as itself, x100."""
    try:
        return get_metric(name)
    except ConfigError:
        return Metric(str(name), True, (), lambda *a, **k: (0.0, []), str(name))


def compute_metrics(names: Sequence[str], preds: Sequence, refs: Sequence,
                    **context: Any) -> tuple[dict[str, float], list[dict[str, float]]]:
    """Every metric in ``names``: aggregates by name, and one ``{name: value}`` dict per example."""
    if len(preds) != len(refs):
        raise ValueError(f"{len(preds)} predictions but {len(refs)} references")
    if not preds:
        raise ValueError("no examples to score")
    aggregates: dict[str, float] = {}
    per_example: list[dict[str, float]] = [{} for _ in preds]
    for name in names:
        value, values = get_metric(name).compute(list(preds), list(refs), **context)
        aggregates[name] = float(value)
        for row, v in zip(per_example, values, strict=True):
            row[name] = float(v)
    return aggregates, per_example


# ---- choice tasks -------------------------------------------------------------------------------------


@register_metric("accuracy", output_types=("choice",), display="Accuracy", unit="%")
def accuracy(preds: list[int], refs: list[int], **context: Any) -> Result:
    """Fraction of predicted indices equal to the gold index."""
    correct = [float(int(p) == int(r)) for p, r in zip(preds, refs, strict=True)]
    return sum(correct) / len(correct), correct


@register_metric("macro_f1", output_types=("choice",), display="Macro-F1", unit="%")
def macro_f1(preds: list[int], refs: list[int], num_classes: int | None = None, **context: Any) -> Result:
    """Unweighted mean of per-class F1 over the classes that occur in ``refs`` or ``preds`` (as sklearn's
    default ``labels``). Per-example values are 0/1 correctness: macro-F1 does not decompose over examples,
    so the bootstrap for macro-F1 resamples correctness."""
    import numpy as np

    y, p = np.asarray(refs, dtype=int), np.asarray(preds, dtype=int)
    valid = (p >= 0) & (p < num_classes) if num_classes is not None else p >= 0
    if num_classes is not None and ((y < 0) | (y >= num_classes)).any():
        raise ValueError(f"gold labels outside 0..{num_classes - 1}: {sorted(set(y.tolist()))}")
    classes = np.union1d(y, p[valid])
    tp = np.array([np.sum((p == c) & (y == c)) for c in classes])
    fp = np.array([np.sum((p == c) & (y != c)) for c in classes])
    fn = np.array([np.sum((p != c) & (y == c)) for c in classes])
    f1 = 2 * tp / (2 * tp + fp + fn)  # every class occurs, so the denominator is positive
    return float(f1.mean()), [float(a == b) for a, b in zip(p, y, strict=True)]


# ---- generate tasks: exact match ------------------------------------------------------------------------

_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_DECIMAL = re.compile(r"(?<![\d.])(\d+)\.(\d+)(?![\d.])")


def normalize_answer(text: str) -> str:
    """Canonical form for exact match: lowercase, whitespace collapsed, ``$`` and thousands separators
    dropped (``$1,000`` -> ``1000``), trailing periods dropped, decimals without trailing zeros
    (``72.00`` -> ``72``, ``2.50`` -> ``2.5``)."""
    text = " ".join(str(text).lower().replace("$", "").split())
    text = _THOUSANDS.sub("", text).rstrip(".").strip()
    return _DECIMAL.sub(lambda m: m[1] + ("." + m[2].rstrip("0") if m[2].rstrip("0") else ""), text)


def _as_refs(refs: Any) -> list[str]:
    """One example's references as a non-empty list of strings."""
    out = [refs] if isinstance(refs, str) else [str(r) for r in refs]
    if not out:
        raise ValueError("an example has no reference")
    return out


@register_metric("exact_match", display="Exact match", unit="%")
def exact_match(preds: list[str], refs: list, **context: Any) -> Result:
    """1 when the normalised prediction equals any normalised reference (see ``normalize_answer``)."""
    scores = [float(normalize_answer(p) in {normalize_answer(r) for r in _as_refs(rs)})
              for p, rs in zip(preds, refs, strict=True)]
    return sum(scores) / len(scores), scores


# ---- generate tasks: ROUGE (rouge-score) ----------------------------------------------------------------


@cache
def _rouge_scorer(rouge_type: str):
    from rouge_score.rouge_scorer import RougeScorer

    return RougeScorer([rouge_type], use_stemmer=True)


def _rouge(rouge_type: str, preds: list[str], refs: list, **context: Any) -> Result:
    """ROUGE F-measure (stemmed) per example against its best-scoring reference; aggregate = mean."""
    scorer = _rouge_scorer(rouge_type)
    scores = [scorer.score_multi(_as_refs(rs), p)[rouge_type].fmeasure
              for p, rs in zip(preds, refs, strict=True)]
    return sum(scores) / len(scores), scores


for _rouge_type in ("rouge1", "rouge2", "rougeL"):
    register_metric(_rouge_type, display=f"ROUGE-{_rouge_type[5:]}", unit="")(partial(_rouge, _rouge_type))
del _rouge_type


# ---- generate tasks: chrF and BLEU (sacrebleu) ----------------------------------------------------------


def _ref_streams(refs: list) -> list[list[str | None]]:
    """sacrebleu's layout: one stream per reference position; ``None`` pads examples with fewer references
    (sacrebleu drops it, so each example is scored against its own references only)."""
    rows = [_as_refs(r) for r in refs]
    width = max(len(r) for r in rows)
    return [[r[i] if i < len(r) else None for r in rows] for i in range(width)]


def _fraction(score: float) -> float:
    """A sacrebleu score (0-100) as a fraction; clipped: a perfect BLEU can come out as 100.00000000000004."""
    return min(1.0, max(0.0, score / 100))


def _sacrebleu(corpus_metric, sentence_metric, preds: list[str], refs: list) -> Result:
    preds = [str(p) for p in preds]
    corpus = _fraction(corpus_metric.corpus_score(preds, _ref_streams(refs)).score)
    sentences = [_fraction(sentence_metric.sentence_score(p, _as_refs(r)).score)
                 for p, r in zip(preds, refs, strict=True)]
    return corpus, sentences


@register_metric("chrf", display="chrF", unit="", corpus=True)
def chrf(preds: list[str], refs: list, **context: Any) -> Result:
    """chrF / 100: corpus score over all references; per example, ``sentence_chrf``."""
    from sacrebleu.metrics import CHRF

    return _sacrebleu(CHRF(), CHRF(), preds, refs)


@register_metric("bleu", display="BLEU", unit="", corpus=True)
def bleu(preds: list[str], refs: list, **context: Any) -> Result:
    """BLEU / 100: corpus score over all references; per example, ``sentence_bleu`` (effective order)."""
    from sacrebleu.metrics import BLEU

    return _sacrebleu(BLEU(), BLEU(effective_order=True), preds, refs)


# ---- online metrics (evaluate) --------------------------------------------------------------------------


def _parse_evaluate(name: str) -> tuple[str, str | None]:
    """``evaluate:<id>[:<key>]`` -> (id, key)."""
    module_id, _, key = name[len(EVALUATE_PREFIX):].partition(":")
    if not module_id.strip():
        raise ConfigError(f"metric {name!r} names no evaluate module",
                          "write evaluate:<hub id>[:<result key>], e.g. evaluate:bertscore:f1")
    return module_id.strip(), key.strip() or None


def _check_evaluate(name: str) -> None:
    _parse_evaluate(name)
    builtin = ", ".join(known_metrics())
    if importlib.util.find_spec("evaluate") is None:
        raise ConfigError(f"metric {name!r} needs the 'evaluate' package, which is not installed",
                          f"pip install evaluate, or use one of the built-in metrics: {builtin}")
    from promptlab.models import hub_reachable  # imported here: it pulls in torch

    if not hub_reachable():
        raise ConfigError(f"metric {name!r} is loaded from the Hugging Face Hub, which cannot be reached "
                          "(no network, or HF_HUB_OFFLINE=1)",
                          f"use one of the built-in metrics, which work offline: {builtin}")


@cache
def _load_evaluate(module_id: str):
    import evaluate

    return evaluate.load(module_id)


def _number(result: dict, key: str | None, name: str) -> float:
    """``result[key]``, or the first numeric value; a list of numbers (e.g. bertscore) is averaged."""
    items = [(key, result.get(key))] if key else list(result.items())
    for k, v in items:
        if isinstance(v, (list, tuple)) and v and all(isinstance(x, Real) for x in v):
            v = sum(v) / len(v)
        if isinstance(v, Real) and not isinstance(v, bool):
            if not 0 <= v <= 1:
                raise ConfigError(f"metric {name!r} returned {k}={v}, not a fraction in [0, 1]",
                                  "pick a result key that is a fraction (evaluate:<id>:<key>) "
                                  "or a built-in metric")
            return float(v)
    under = f" under {key!r}" if key else ""
    raise ConfigError(f"metric {name!r} returned no numeric value{under}: {result}",
                      "name a numeric result key: evaluate:<id>:<key>")


def _evaluate_compute(name: str, preds: list, refs: list, **context: Any) -> Result:
    """Aggregate over all examples; per-example values by scoring one example at a time (slow for model-based
    metrics such as bertscore: one call per example)."""
    module_id, key = _parse_evaluate(name)
    module = _load_evaluate(module_id)
    aggregate = _number(module.compute(predictions=preds, references=refs), key, name)
    per_example = [_number(module.compute(predictions=[p], references=[r]), key, name)
                   for p, r in zip(preds, refs, strict=True)]
    return aggregate, per_example
