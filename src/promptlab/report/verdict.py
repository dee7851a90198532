"""The verdict a report opens with: per task, the row that wins on dev, the rows its interval cannot tell from it,
and which of those costs least in total for a given number of queries.

Total cost of a row = its one-off cost (every trial's training and dev scoring, a prompt search, demonstrations
written by a model) + N x its per-query cost (eval seconds per example, measured in the run: a long few-shot
prompt costs more on every query, a tuned model costs once). Both are seconds of compute on the machine the runs
were timed on, so the break-even points are read off measured data, never estimated. Rows are chosen on dev:
the winner is the best ``dev_score`` (each row's own dev-selected settings), its eval interval decides which
rows tie with it. No library computes this (a cost model over promptlab's own records), so it is written here.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from promptlab.report.columns import fmt_count, fmt_seconds, missing

QUERIES = (1_000, 100_000, 10_000_000)  # the break-even table's columns: queries served after training


def _ratio(num: pd.Series, den: pd.Series) -> pd.Series:
    return (num / den.where(den > 0)).astype(float)


def costs(rows: pd.DataFrame) -> pd.DataFrame:
    """``rows`` (summary rows) with ``one_off_seconds``, ``query_seconds`` and ``query_tokens`` per example, and
    ``total_<N>`` for every N in ``QUERIES``."""
    zero = lambda col: rows[col].fillna(0) if col in rows else 0.0  # noqa: E731
    tuning = np.maximum(zero("tuning_seconds_mean"), zero("train_seconds_mean"))  # every trial: train + dev
    search = zero("search_seconds_mean")  # a search writes and scores its demonstrations inside its own time
    demos = zero("demo_generation_seconds_mean").where(search == 0, 0.0)
    # per query: what the run measured for its headline prompt (records before it: the whole eval pass)
    measured = lambda col: rows[col] if col in rows else pd.Series(np.nan, index=rows.index)  # noqa: E731
    out = rows.assign(one_off_seconds=tuning + search + demos,
                      query_seconds=measured("query_seconds_mean").fillna(
                          _ratio(rows["eval_seconds_mean"], rows["eval_examples"])),
                      query_tokens=measured("query_prompt_tokens_mean").fillna(
                          _ratio(rows["eval_prompt_tokens_mean"], rows["eval_examples"])))
    for n in QUERIES:
        out[f"total_{n}"] = out["one_off_seconds"] + n * out["query_seconds"]
    return out


def envelope(rows: pd.DataFrame, start: float = 1.0, stop: float = 1e9) -> list[tuple[int, float, float]]:
    """The cheapest row as N (queries) grows: ``[(row index, from N, to N), ...]`` over ``[start, stop]``, the
    lower envelope of the lines one_off + N x per_query."""
    rows = rows[rows["query_seconds"].notna()]
    if rows.empty:
        return []
    total = lambda i, n: rows.at[i, "one_off_seconds"] + n * rows.at[i, "query_seconds"]  # noqa: E731
    current = min(rows.index, key=lambda i: (total(i, start), rows.at[i, "query_seconds"]))
    n, out = start, []
    while True:
        o, q = rows.at[current, "one_off_seconds"], rows.at[current, "query_seconds"]
        crossings = [((rows.at[i, "one_off_seconds"] - o) / (q - rows.at[i, "query_seconds"]), rows.at[i, "query_seconds"], i)
                     for i in rows.index if rows.at[i, "query_seconds"] < q]
        ahead = [c for c in crossings if c[0] > n]
        if not ahead or min(ahead)[0] >= stop:
            out.append((current, n, stop))
            return out
        at, _, nxt = min(ahead)
        out.append((current, n, at))
        current, n = nxt, at


def _overlaps(rows: pd.DataFrame, best: pd.Series) -> pd.Series:
    """Rows whose eval interval overlaps the best row's (a row without an interval: its mean inside best's)."""
    low = rows["score_low"].fillna(rows["score_mean"])
    high = rows["score_high"].fillna(rows["score_mean"])
    b_low = best["score_low"] if not missing(best["score_low"]) else best["score_mean"]
    b_high = best["score_high"] if not missing(best["score_high"]) else best["score_mean"]
    return (low <= b_high) & (high >= b_low)


def _tied(rows: pd.DataFrame, best, labels: pd.Series, pairs: dict[frozenset, bool]) -> pd.Series:
    """Rows the best row cannot be told from: the paired difference's 95% interval contains 0
    (``report.stats.significance``: same examples, same seeds); a row with no paired comparison: its interval
    overlaps the best row's."""
    overlap = _overlaps(rows, rows.loc[best])
    paired = [pairs.get(frozenset((labels.loc[best], labels.loc[i]))) for i in rows.index]
    return pd.Series([i == best or (overlap[i] if excludes is None else not excludes)
                      for i, excludes in zip(rows.index, paired, strict=True)], index=rows.index)


def verdict(rows: pd.DataFrame, labels: pd.Series, pairs: dict[frozenset, bool] | None = None) -> dict:
    """One task's verdict from its summary rows (completed ones, one split): ``best`` (index; chosen on dev,
    or on eval when no row has a dev score, ``on`` says which), ``tied`` (indices; ``pairs``: {frozenset of two
    labels: whether their paired difference's interval excludes 0}), ``envelope`` over the tied rows,
    ``cheapest`` per N and ``text``: the verdict in two or three sentences."""
    rows = costs(rows[rows["n_seeds"] > 0])
    if rows.empty:
        return {}
    sign = 1.0 if bool(rows["higher_is_better"].iloc[0]) else -1.0
    on = "dev" if rows["dev_score_mean"].notna().any() else "eval"
    key = (rows["dev_score_mean"] if on == "dev" else rows["score_mean"]) * sign
    best = key.fillna(-math.inf).idxmax()
    b = rows.loc[best]
    tied = rows[_tied(rows, best, labels, pairs or {})]
    env = envelope(tied)
    cheapest = {n: min(tied.index, key=lambda i: (tied.at[i, f"total_{n}"], -sign * tied.at[i, "score_mean"]))
                for n in QUERIES if tied[f"total_{n}"].notna().any()}
    name = lambda i: labels.loc[i]  # noqa: E731
    score = lambda i: _score(rows.loc[i])  # noqa: E731
    text = [f"Best on {on}: {name(best)}, {score(best)} on eval"
            f" ({'dev ' + format(b['dev_score_mean'], '.1f') if on == 'dev' else 'no dev scores recorded'})."]
    others = [i for i in tied.index if i != best]
    text.append(f"Not told apart from it: {', '.join(f'{name(i)} ({score(i)})' for i in others)}." if others
                else "Every other row is told apart from it.")
    if len(env) > 1:
        steps = [f"{name(env[0][0])} costs least in total below {_queries(env[1][1])} queries"]
        steps += [f"{name(i)} from {_queries(lo)}" for i, lo, _ in env[1:]]
        text.append("Of these, " + "; ".join(steps) + " (one-off cost + per-query cost x queries).")
    elif env:
        text.append(f"Of these, {name(env[0][0])} costs least in total at any number of queries.")
    return {"best": best, "on": on, "tied": list(tied.index), "envelope": env, "cheapest": cheapest,
            "rows": rows, "text": " ".join(text)}


def _score(r: pd.Series) -> str:
    ci = "" if missing(r["score_low"]) else f" [{r['score_low']:.1f}, {r['score_high']:.1f}]"
    return f"{r['score_mean']:.1f}{ci}"


def _queries(n: float) -> str:
    """A query count as people say it: "3.2K", "1.5M" (counts below 1,000 exactly)."""
    return fmt_count(round(n)) if n >= 1000 else f"{math.ceil(n):,}"


def break_even_table(v: dict, labels: pd.Series) -> pd.DataFrame:
    """Per row: its eval score, whether it ties with the best, its one-off and per-query costs (measured), and
    the total cost at each N in ``QUERIES``; the cheapest tied row at each N is marked ★."""
    rows = v["rows"]
    cols: dict[str, list | pd.Series] = {
        "Method": labels.loc[rows.index].tolist(),
        "Score [95% CI]": [_score(r) + (" (best on dev)" if i == v["best"] and v["on"] == "dev" else
                                        " (best)" if i == v["best"] else "") for i, r in rows.iterrows()],
        "Tied with best": ["—" if i == v["best"] else "yes" if i in v["tied"] else "no" for i in rows.index],
        "One-off": rows["one_off_seconds"].map(fmt_seconds).tolist(),
        "Per query": rows["query_seconds"].map(_per_query).tolist(),
        "Tokens / query": rows["query_tokens"].map(lambda t: "—" if missing(t) else f"{t:.0f}").tolist(),
    }
    for n in QUERIES:
        cols[f"Total @{fmt_count(n)}"] = [
            fmt_seconds(rows.at[i, f"total_{n}"]) + (" ★" if v["cheapest"].get(n) == i else "") for i in rows.index]
    return pd.DataFrame(cols)


def _per_query(s: float) -> str:
    return "—" if missing(s) else f"{1000 * s:.3g} ms" if s < 1 else fmt_seconds(s)


NOTE = ("One-off: every trial's training and dev scoring, a prompt search, model-written demonstrations. Per query: "
        "eval seconds per example of the row's headline prompt, as measured (batched, on the machine named above), "
        "with its prompt tokens. "
        "Total @N = one-off + per query x N queries. Tied with best: the 95% interval of its paired difference with the "
        "row best on dev contains 0 (significance.md; without a paired comparison: the two intervals overlap). "
        "★ the cheapest tied row at that many queries.")
