"""Answer filters: extraction from model outputs (GSM8K-style and free-text choices) and config errors."""

from __future__ import annotations

import pytest

from promptlab.errors import ConfigError
from promptlab.evaluation.filters import build_filters, first_line, last_number, map_choice

GSM8K_FILTERS = [
    {"type": "regex", "pattern": r"(?i)answer is[:\s*$]*(-?[\d,]*\.?\d+)", "select": "last",
     "fallback": "keep"},
    {"type": "last_number"},
]


@pytest.mark.parametrize(("text", "expected"), [
    ("Tom has 5 apples and buys 13 more, so she has 18 apples. The answer is 18.", "18"),
    ("#### 1,234", "1234"),
    ("-3.5 degrees", "-3.5"),
    ("The temperature fell from 4 to −2.", "-2"),
    ("It costs $1,000,000.50 in total.", "1000000.50"),
    ("Pages 5-3 of 10-12", "12"),  # a hyphen between numbers is not a sign
    ("1,2345", "2345"),  # not a thousands separator
    ("no digits here", ""),
    ("", ""),
])
def test_last_number(text, expected):
    assert last_number(text) == expected


@pytest.mark.parametrize(("text", "expected"), [
    ("She had 20, gave away 2, so she has 18 apples. The answer is 18.", "18"),
    ("First 3 then 4.\nThe answer is: $1,234. Check: 1234 - 34 = 1200", "1234"),  # beats the last number
    ("The answer is **42**, not 41.", "42"),
    ("the final answer is 15 gallons * 8 = 120 pints\nThe answer is 120.", "120"),  # the last "answer is"
    ("So 7 + 11 = 18 apples.", "18"),  # no "answer is": the last number
    ("I am not sure.", ""),
])
def test_gsm8k_chain(text, expected):
    assert build_filters(GSM8K_FILTERS)(text, None) == expected


def test_reference_filter_reads_the_number_after_hashes():
    ref = build_filters([{"type": "regex", "pattern": r"####\s*(-?[\d,.]+)", "fallback": "empty"}])
    assert ref("Natalia sold 48/2 = 24 clips.\n#### 1,234", None) == "1,234"
    assert ref("no final line", None) == ""


def test_regex_group_fallback_and_select():
    text = "A: one. A: two."
    assert build_filters([{"type": "regex", "pattern": r"A: (\w+)"}])(text, None) == "one"
    assert build_filters([{"type": "regex", "pattern": r"A: (\w+)", "select": "last"}])(text, None) == "two"
    assert build_filters([{"type": "regex", "pattern": r"A: \w+", "group": 0}])(text, None) == "A: one"
    assert build_filters([{"type": "regex", "pattern": r"B: (\w+)"}])(text, None) == text  # default: keep
    assert build_filters([{"type": "regex", "pattern": r"B: (\w+)", "fallback": "empty"}])(text, None) == ""


def test_text_filters_and_order():
    assert first_line("\n\n  Paris is the capital.  \nBecause ...") == "Paris is the capital."
    assert first_line("   \n") == ""
    chain = build_filters([{"type": "first_line"}, {"type": "lowercase"}, {"type": "strip"}])
    assert chain("\n  Great Movie \nmore", None) == "great movie"
    assert build_filters([])("  unchanged ", None) == "  unchanged "
    assert build_filters(None)("x", None) == "x"


@pytest.mark.parametrize(("text", "expected"), [
    ("The sentiment is Positive.", "positive"),
    ("Not negative at all; clearly positive", "positive"),  # the last mentioned choice
    ("It is very positive!", "very positive"),  # ends where "positive" ends: the longer wins
    ("The answer is: negative\n", "negative"),
    ("positively unclear", ""),  # word-bounded
    ("no idea", ""),
])
def test_map_choice(text, expected):
    assert map_choice(text, ["negative", "positive", "very positive"]) == expected


def test_map_choice_with_per_example_sentences():
    choices = ["The chandelier dropped from the ceiling.", "The chandelier's lights flickered on and off."]
    out = "Premise... the cause is that the chandelier dropped from the ceiling"
    assert build_filters([{"type": "map_choice"}])(out, choices) == choices[0]


def test_map_choice_needs_choices():
    with pytest.raises(ConfigError, match="choice task"):
        build_filters([{"type": "map_choice"}])("positive", None)


@pytest.mark.parametrize(("specs", "problem", "fix"), [
    ([{"type": "uppercase"}], "unknown filter type 'uppercase'", "last_number"),
    ([{"pattern": "x"}], "is not a filter", "type one of"),
    (["strip"], "is not a filter", "{type: ...}"),
    ([{"type": "regex"}], "needs a pattern", "pattern:"),
    ([{"type": "regex", "pattern": "(unclosed"}], "does not compile", "fix the regular expression"),
    ([{"type": "regex", "pattern": "(a)", "group": "1"}], "not a non-negative integer", "capture group"),
    ([{"type": "regex", "pattern": "(a)", "group": True}], "not a non-negative integer", "capture group"),
    ([{"type": "regex", "pattern": "(a)", "group": 2}], "has 1 capture group", "between 0 and 1"),
    ([{"type": "regex", "pattern": "a", "fallback": "none"}], "fallback 'none'", "keep"),
    ([{"type": "regex", "pattern": "a", "select": "middle"}], "select 'middle'", "first or last"),
    ([{"type": "strip", "pattern": "a"}], "unknown key(s) ['pattern']", "takes: type"),
    ({"type": "strip"}, "not a list of filters", "[{type: strip}"),
])
def test_config_errors_before_anything_runs(specs, problem, fix):
    with pytest.raises(ConfigError) as err:
        build_filters(specs)
    assert problem in err.value.problem and fix in err.value.fix


def test_error_names_the_failing_entry():
    with pytest.raises(ConfigError, match=r"reference_filters\[1\]"):
        build_filters([{"type": "strip"}, {"type": "nope"}], where="reference_filters")
