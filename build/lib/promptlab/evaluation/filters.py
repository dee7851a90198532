r"""Answer filters: the steps between a model's generated text and the metric (lm-eval's ``filter_list``).

A task lists them in order, e.g. for GSM8K::

    filters:
      - {type: regex, pattern: 'answer is[:\s*$]*(-?[\d,]*\.?\d+)', select: last, fallback: keep}
      - {type: last_number}     # no "answer is": the last number in the text

``build_filters`` checks the whole list (``ConfigError`` before any model loads) and returns one function
``apply(text, choices) -> text``; ``choices`` are the example's answer texts on choice tasks, else None.

Filters map a list of answers to a list (lm-eval's filters): a text filter maps each answer, a list filter
(``majority_vote``, ``take_first``) combines several answers to one example, e.g. sampled reasoning paths
(self-consistency: a method's ``filters: [{type: majority_vote}]``, ``build_list_filters``).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from promptlab.errors import ConfigError

Filter = Callable[[str, Sequence[str] | None], str]
ListFilter = Callable[[list[str], Sequence[str] | None], list[str]]

# A number: optional sign (not a hyphen inside a word, e.g. "5-3"), digits with optional thousands
# separators, optional decimals.
_NUMBER = re.compile(r"(?:(?<![\w-])[-\u2212])?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?")


def _regex(pattern: re.Pattern, group: int, fallback: str, select: str) -> Filter:
    """Extract an answer span, e.g. what follows "The answer is" or "####"."""
    def apply(text: str, choices: Sequence[str] | None = None) -> str:
        matches = list(pattern.finditer(text))
        if not matches:
            return text if fallback == "keep" else ""
        return (matches[0] if select == "first" else matches[-1]).group(group) or ""
    return apply


def last_number(text: str, choices: Sequence[str] | None = None) -> str:
    """The last number in the text (sign and decimals kept, thousands separators removed), or "" when the
    text has none: chain-of-thought answers usually end with the result, e.g. "... so she has 18 apples."."""
    numbers = _NUMBER.findall(text)
    return numbers[-1].replace(",", "").replace("\u2212", "-") if numbers else ""


def first_line(text: str, choices: Sequence[str] | None = None) -> str:
    """The first non-empty line, stripped: models often add an explanation after the answer."""
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def strip(text: str, choices: Sequence[str] | None = None) -> str:
    """Surrounding whitespace removed: generations often start with a space or newline."""
    return text.strip()


def lowercase(text: str, choices: Sequence[str] | None = None) -> str:
    """Lowercased: chrF, BLEU and the regex filter are case-sensitive."""
    return text.lower()


def map_choice(text: str, choices: Sequence[str] | None = None) -> str:
    """The choice whose text occurs last in the output (case-insensitive, as a whole word or phrase; a
    choice's trailing ``.!?`` is optional), or "" when none does: turns free text, e.g. a chain of thought,
    into one of the answers. When choices end at the same place ("very positive", "positive"), the
    longer wins."""
    if choices is None:
        raise ConfigError("the map_choice filter got no choices: it maps free text onto a choice task's "
                          "answers",
                          "use map_choice only in the filters of a choice task")
    best: tuple[int, int] | None = None
    answer = ""
    for choice in choices:
        core = str(choice).strip().rstrip(".!?").strip()
        if not core:
            continue
        pattern = rf"(?<!\w){re.escape(core)}(?!\w)"
        for m in re.finditer(pattern, text, flags=re.IGNORECASE):
            key = (m.start() + len(core), len(core))  # where the choice's words end, then its length
            if best is None or key > best:
                best, answer = key, choice
    return answer


def majority_vote(answers: list[str], choices: Sequence[str] | None = None) -> list[str]:
    """The most common answer (Wang et al. 2022's self-consistency); a tie goes to the answer that came first,
    as lm-eval's ``majority_vote`` (``Counter.most_common``) does."""
    if not answers:
        return []
    counts = Counter(answers)
    return [max(counts, key=lambda a: (counts[a], -answers.index(a)))]


def take_first(answers: list[str], choices: Sequence[str] | None = None) -> list[str]:
    """The first answer only (greedy decoding's, or the first sample's)."""
    return answers[:1]


_LIST = {"majority_vote": majority_vote, "take_first": take_first}
_SIMPLE = {"last_number": last_number, "first_line": first_line, "strip": strip, "lowercase": lowercase,
           "map_choice": map_choice}
_REGEX_KEYS = {"type", "pattern", "group", "fallback", "select"}
TYPES = ("regex", *_SIMPLE, *_LIST)


def _build_regex(spec: Mapping[str, Any], where: str) -> Filter:
    pattern = spec.get("pattern")
    if not isinstance(pattern, str) or not pattern:
        raise ConfigError(f"{where}: a regex filter needs a pattern", "add pattern: '<regular expression>'")
    try:
        compiled = re.compile(pattern)
    except re.error as err:
        raise ConfigError(f"{where}: pattern {pattern!r} does not compile: {err}",
                          "fix the regular expression (YAML: single-quote it so backslashes stay)") from None
    group = spec.get("group", 1 if compiled.groups else 0)
    if not isinstance(group, int) or isinstance(group, bool) or group < 0:
        raise ConfigError(f"{where}: group {group!r} is not a non-negative integer",
                          "give the number of the capture group to keep (0: the whole match)")
    if group > compiled.groups:
        raise ConfigError(f"{where}: group {group} but pattern {pattern!r} has {compiled.groups} "
                          "capture group(s)",
                          f"use a group between 0 and {compiled.groups}, or add (...) around the answer")
    fallback, select = spec.get("fallback", "keep"), spec.get("select", "first")
    if fallback not in ("keep", "empty"):
        raise ConfigError(f"{where}: fallback {fallback!r} is unknown",
                          "use fallback: keep (the text unchanged) or empty (\"\") for no match")
    if select not in ("first", "last"):
        raise ConfigError(f"{where}: select {select!r} is unknown", "use select: first or last (which match)")
    return _regex(compiled, group, fallback, select)


def _build_one(spec: Any, where: str) -> ListFilter:
    if not isinstance(spec, Mapping) or "type" not in spec:
        raise ConfigError(f"{where}: {spec!r} is not a filter",
                          f"write each filter as {{type: ...}}, type one of {', '.join(TYPES)}")
    kind = spec["type"]
    if kind not in TYPES:
        raise ConfigError(f"{where}: unknown filter type {kind!r}", f"use one of: {', '.join(TYPES)}")
    allowed = _REGEX_KEYS if kind == "regex" else {"type"}
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise ConfigError(f"{where}: a {kind} filter has unknown key(s) {unknown}",
                          f"remove them; a {kind} filter takes: {', '.join(sorted(allowed))}")
    if kind in _LIST:
        return _LIST[kind]
    one = _build_regex(spec, where) if kind == "regex" else _SIMPLE[kind]
    return lambda answers, choices=None: [one(a, choices) for a in answers]


def build_list_filters(specs: Sequence[Mapping[str, Any]] | None, where: str = "filters") -> ListFilter:
    """One function applying ``specs`` in order to a list of answers; an empty list is the identity. Every
    mistake (unknown type or key, missing or broken pattern, bad group) raises ``ConfigError`` here, not mid-run."""
    if specs is not None and (isinstance(specs, (str, Mapping)) or not isinstance(specs, Sequence)):
        raise ConfigError(f"{where} is {specs!r}, not a list of filters",
                          f"write {where}: [{{type: strip}}, ...]")
    steps = [_build_one(spec, f"{where}[{i}]") for i, spec in enumerate(specs or [])]

    def apply(answers: list[str], choices: Sequence[str] | None = None) -> list[str]:
        for step in steps:
            answers = step(answers, choices)
        return answers

    return apply


def build_filters(specs: Sequence[Mapping[str, Any]] | None, where: str = "filters") -> Filter:
    """``build_list_filters`` for one answer: ``apply(text, choices) -> text``."""
    chain = build_list_filters(specs, where)

    def apply(text: str, choices: Sequence[str] | None = None) -> str:
        return next(iter(chain([text], choices)), "")

    return apply
