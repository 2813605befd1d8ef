"""Visitor-level facts (METRICS.md section 7) on a small hand-built click stream."""

from __future__ import annotations

from expo_platform.hours import HOUR_MS, hour_start_ms
from expo_platform.lake import union_all
from expo_platform.scorecards import VISITOR_METRICS, per_visitor, visitor_daily, visitor_facts
from tests.clickstream import H0, at, b, chain_sessions

ORDER = {"order_id": "o1", "revenue": 10.0, "units": 3}
A = [("exp", "A", True)]
B = [("exp", "B", False)]
STREAM = [
    # v1: a visit from 00:10 into hour 1 with an order, then a one-page visit in hour 2.
    b(at(0, 10), visitor="v1", session="s1", exps=A),
    b(at(0, 40), visitor="v1", session="s1", exps=A),
    b(at(1, 5), "order", visitor="v1", session="s1", exps=A, order=ORDER),
    b(at(2, 0), visitor="v1", session="s1b", exps=A),
    # v2: one page view at 00:59 continued at 01:30: no bounce.
    b(at(0, 59), visitor="v2", session="s2", exps=B),
    b(at(1, 30), "add_to_cart", visitor="v2", session="s2", exps=B),
    # v3: a bounce, then an error beacon in a new visit (not a bounce).
    b(at(0, 5), visitor="v3", session="s3", exps=A),
    b(at(2, 30), "error", visitor="v3", session="s3", exps=A),
]


def _facts(spark, *by):
    sessions, _ = chain_sessions(spark, STREAM, 4)
    rows = visitor_facts(union_all(sessions[:3]), union_all(sessions), *by).collect()
    return {(r["variant"], r["population"], r["visitor_id"], *(r[k] for k in by)): r for r in rows}


def values(row) -> tuple:
    return tuple(row[m] for m in VISITOR_METRICS)


def test_visitor_sums_over_hours(spark):
    facts = _facts(spark)
    # page_views, visits, bounces, orders, units, revenue, errors
    assert values(facts[("A", "assigned", "v1")]) == (3, 2, 1, 1, 3, 10.0, 0)
    assert values(facts[("A", "qualified", "v1")]) == (3, 2, 1, 1, 3, 10.0, 0)
    assert values(facts[("B", "assigned", "v2")]) == (1, 1, 0, 0, 0, 0.0, 0)
    assert values(facts[("A", "assigned", "v3")]) == (1, 2, 1, 0, 0, 0.0, 1)
    assert ("B", "qualified", "v2") not in facts  # v2 never qualified: no row of zeros
    assert len(facts) == 5


def test_visitor_sums_by_hour(spark):
    facts = _facts(spark, "hour_ms")
    hour = [hour_start_ms(H0) + h * HOUR_MS for h in range(3)]
    assert values(facts[("A", "assigned", "v1", hour[0])]) == (2, 1, 0, 0, 0, 0.0, 0)
    assert values(facts[("A", "assigned", "v1", hour[1])]) == (0, 0, 0, 1, 3, 10.0, 0)
    assert values(facts[("A", "assigned", "v1", hour[2])]) == (1, 1, 1, 0, 0, 0.0, 0)
    # v2's bounce candidate of hour 0 is taken back by the next hour's continuation.
    assert values(facts[("B", "assigned", "v2", hour[0])]) == (1, 1, 0, 0, 0, 0.0, 0)


def test_scorecard_rows_group_days_per_visitor(spark):
    sessions, _ = chain_sessions(spark, STREAM, 4)
    # Two "days" made of hours 0-1 and 2: summing them per visitor gives the whole range.
    first = visitor_daily(union_all(sessions[:2]), union_all(sessions[:3]))
    second = visitor_daily(sessions[2], union_all(sessions[2:]))
    rows = {
        r["visitor_id"]: values(r)
        for r in per_visitor(first.unionByName(second), "exp", "assigned").collect()
    }
    assert rows == {
        "v1": (3, 2, 1, 1, 3, 10.0, 0),
        "v2": (1, 1, 0, 0, 0, 0.0, 0),
        "v3": (1, 2, 1, 0, 0, 0.0, 1),
    }
