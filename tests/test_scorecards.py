"""Visitor-level facts (METRICS.md section 7) on a small hand-built click stream."""

from __future__ import annotations

from collections import defaultdict

from expo_platform.analysis.scorecards import (
    VISITOR_METRICS,
    per_visitor,
    visitor_daily,
    visitor_facts,
)
from expo_platform.core.hours import HOUR_MS, hour_start_ms
from expo_platform.lake import union_all
from tests.clickstream import GAP, H0, MIN, at, b, chain_sessions
from tests.test_visits_metrics import hourly_values

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


# Every trap of METRICS.md sections 2, 3 and 7 at once, hours 0-13 after H0 (the lines are
# listed out of order on purpose: the layers must not depend on arrival order).
X = [("exp", "X", True)]
Y = [("exp", "Y", True)]
ADVERSARIAL = [
    # v1: one visit of five page views and an order touching hours 0, 1 and 2; the gaps at
    # both hour boundaries are exactly 35 minutes; one beacon is sent twice.
    b(at(2, 20), "order", visitor="v1", session="s1", exps=X),
    b(at(0, 40), visitor="v1", session="s1", exps=X),
    b(at(0, 50), visitor="v1", session="s1", exps=X),
    b(at(1, 35), visitor="v1", session="s1", exps=X),
    b(at(1, 35) + GAP, visitor="v1", session="s1", exps=X),
    b(at(0, 50) + GAP, visitor="v1", session="s1", exps=X, event_id="dup-1"),
    b(at(0, 50) + GAP, visitor="v1", session="s1", exps=X, event_id="dup-1"),
    # v2: a visit of eight beacons over five hours (3 to 7), a beacon every 30 minutes.
    *[b(at(3, 45) + k * 30 * MIN, visitor="v2", session="s2", exps=Y) for k in range(8)],
    # v3: 35 minutes and 1 ms across the boundary of hours 0 and 1: two one-page visits.
    b(at(0, 40), visitor="v3", session="s3", exps=X),
    b(at(0, 40) + GAP + 1, visitor="v3", session="s3", exps=X),
    # v4: a robot, a beacon every 30 minutes for 13 hours: the visit is cut at 12 hours.
    *[b(at(0, 10) + k * 30 * MIN, visitor="v4", session="s4", exps=X) for k in range(27)],
    # v5: qualification flips within one visit (false, true, false), across hours 4 and 5.
    b(at(4, 50), visitor="v5", session="s5", exps=[("exp", "X", False)]),
    b(at(5, 10), "error", visitor="v5", session="s5", exps=[("exp", "X", True)]),
    b(at(5, 20), visitor="v5", session="s5", exps=[("exp", "X", False)]),
    # v6: seen in both variants (two sessions), and the experiment listed twice in a beacon:
    # the first entry counts.
    b(at(6, 0), visitor="v6", session="s6a", exps=X),
    b(at(6, 50), visitor="v6", session="s6b", exps=[("exp", "Y", False), ("exp", "X", True)]),
    b(at(7, 10), "order", visitor="v6", session="s6b", exps=[("exp", "Y", False)], order=ORDER),
    # v7: an order reloaded in the next hour (counts once), then a bounce right before an
    # hour's end whose visit goes on 35 minutes later (no bounce).
    b(at(8, 55), "order", visitor="v7", session="s7", exps=X, order=ORDER),
    b(at(9, 5), "order", visitor="v7", session="s7", exps=X, order=ORDER),
    b(at(10, 59), visitor="v7", session="s7b", exps=X),
    b(at(10, 59) + GAP, "add_to_cart", visitor="v7", session="s7b", exps=X),
]
HOURS = 14


def test_visitor_sums_equal_the_hourly_metrics_on_adversarial_traffic(spark):
    """Per-visitor sums of every key equal the hourly metrics summed over the range, and a
    visit that spans several hours counts once (METRICS.md section 7)."""
    sessions, by_hour = chain_sessions(spark, ADVERSARIAL, HOURS + 1)
    hourly = hourly_values(sessions, by_hour, HOURS)
    facts = visitor_daily(union_all(sessions[:HOURS]), union_all(sessions)).collect()
    keys = {(r["experiment"], r["variant"], r["population"]) for r in facts}
    assert keys == {("exp", v, p) for v in "XY" for p in ("assigned", "qualified")}
    for key in sorted(keys):
        for name in VISITOR_METRICS:
            summed = sum(
                r[name] for r in facts if (r["experiment"], r["variant"], r["population"]) == key
            )
            expected = sum(h.get((*key, name), 0.0) for h in hourly)
            assert summed == expected, f"{key} {name}: visitors {summed}, hours {expected}"
    # The trend reports' facts by hour add up to each hour's metrics too.
    by_hour = defaultdict(float)
    for r in visitor_facts(union_all(sessions[:HOURS]), union_all(sessions), "hour_ms").collect():
        for name in VISITOR_METRICS:
            hour = (r["hour_ms"] - hour_start_ms(H0)) // HOUR_MS
            by_hour[(hour, r["experiment"], r["variant"], r["population"], name)] += r[name]
    for hour, metrics in enumerate(hourly):
        for (*key, name), value in metrics.items():
            if name in VISITOR_METRICS:
                assert by_hour[(hour, *key, name)] == value, (hour, key, name)
    by_visitor = {(r["variant"], r["population"], r["visitor_id"]): values(r) for r in facts}
    # page_views, visits, bounces, orders, units, revenue, errors
    assert by_visitor[("X", "assigned", "v1")] == (5, 1, 0, 1, 1, 10.0, 0)
    assert by_visitor[("Y", "assigned", "v2")] == (8, 1, 0, 0, 0, 0.0, 0)
    assert by_visitor[("X", "assigned", "v3")] == (2, 2, 2, 0, 0, 0.0, 0)
    assert by_visitor[("X", "assigned", "v4")] == (27, 2, 0, 0, 0, 0.0, 0)
    assert by_visitor[("X", "assigned", "v5")] == (2, 1, 0, 0, 0, 0.0, 1)
    # Qualified from its second beacon (an error) on: the visit starts there, no page views.
    assert by_visitor[("X", "qualified", "v5")] == (0, 1, 0, 0, 0, 0.0, 1)
    assert by_visitor[("X", "assigned", "v6")] == (1, 1, 1, 0, 0, 0.0, 0)
    assert by_visitor[("Y", "assigned", "v6")] == (1, 1, 0, 1, 3, 10.0, 0)
    assert ("Y", "qualified", "v6") not in by_visitor  # the listed-twice Y entry said false
    assert by_visitor[("X", "assigned", "v7")] == (1, 2, 0, 1, 3, 10.0, 0)
