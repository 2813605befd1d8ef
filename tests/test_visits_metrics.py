"""Visits and hourly metrics (METRICS.md sections 2 to 4) on small hand-built click streams."""

from __future__ import annotations

import json
from datetime import timedelta

from pyspark.sql import functions as F

from expo_platform.core import beacons as bc
from expo_platform.core.hours import HOUR_MS, hour_start_ms
from expo_platform.core.metrics import (
    EXPERIMENT_METRICS,
    KEY,
    at_least_exact,
    estimated_visitors,
    exact_visitors,
    explode_facts,
    hourly_metrics,
    merge_sketches,
    sketches_of_hours,
    visitor_sketches,
)
from expo_platform.core.visits import SESSIONS_SCHEMA, build_sessions
from expo_platform.lake import union_all
from tests.clickstream import GAP, H0, at, b, chain_sessions


def run_hours(spark, beacons: list[dict], hours: int) -> list[dict]:
    """Chain the sessions of hours 0..hours-1 in memory; return each hour's metric values.

    Every hour's metrics see the next hour's sessions (one extra hour is sessionized).
    """
    return hourly_values(*chain_sessions(spark, beacons, hours + 1), hours)


def exact_visitors_24h(last_24h_sessions):
    """visitors_24h per key counted exactly from sessions rows: the hand-checkable stand-in
    for the layers' sketch estimates in these tests."""
    pairs = explode_facts(last_24h_sessions).select(*KEY, "visitor_id").distinct()
    return pairs.groupBy(*KEY).agg(F.count(F.lit(1)).alias("visitors_24h"))


def hourly_values(sessions: list, by_hour: dict, hours: int) -> list[dict]:
    """Each of hours 0..hours-1's metric values from chained sessions (one hour more)."""
    out = []
    for h in range(hours):
        if not by_hour[h]:
            out.append({})  # no beacons, no rows
            continue
        last_24h = union_all(sessions[max(0, h - 23) : h + 1])
        wide = hourly_metrics(sessions[h], sessions[h + 1], exact_visitors_24h(last_24h))
        out.append(
            {
                (r["experiment"], r["variant"], r["population"], m): r[m]
                for r in wide.collect()
                for m in EXPERIMENT_METRICS
            }
        )
    return out


def metric(values: dict, name: str, key=("exp", "A", "assigned")) -> float | None:
    return values.get((*key, name))


def test_gap_of_exactly_35_minutes_is_the_same_visit(spark):
    beacons = [
        b(at(0, 1), session="s1"),
        b(at(0, 1) + GAP, session="s1"),  # exactly 35 minutes: the same visit
        b(at(0, 2), session="s2", visitor="v2"),
        b(at(0, 2) + GAP + 1, session="s2", visitor="v2"),  # 1 ms more: a new visit
    ]
    (hour0,) = run_hours(spark, beacons, 1)
    assert metric(hour0, "visits") == 3.0
    assert metric(hour0, "page_views") == 4.0
    assert metric(hour0, "bounces") == 2.0  # the two single-beacon visits of s2


def test_visit_crossing_an_hour_boundary(spark):
    beacons = [b(at(0, 50)), b(at(1, 10)), b(at(1, 20), "order")]
    hour0, hour1 = run_hours(spark, beacons, 2)
    assert metric(hour0, "visits") == 1.0
    assert metric(hour0, "bounces") == 0.0  # continued at 01:10, 20 minutes later
    assert metric(hour1, "visits") == 0.0  # the visit started in hour 0
    assert metric(hour1, "orders") == 1.0
    assert metric(hour1, "page_views") == 1.0


def test_visit_not_continued_after_the_gap(spark):
    beacons = [b(at(0, 50)), b(at(1, 26))]  # 36 minutes later: a new visit
    hour0, hour1 = run_hours(spark, beacons, 2)
    assert (metric(hour0, "visits"), metric(hour0, "bounces")) == (1.0, 1.0)
    assert (metric(hour1, "visits"), metric(hour1, "bounces")) == (1.0, 1.0)


def test_order_id_counted_once_per_visit_and_across_hours(spark):
    first = {"order_id": "o1", "revenue": 10.0, "units": 2}
    reload = {"order_id": "o1", "revenue": 99.0, "units": 9}
    other = {"order_id": "o2", "revenue": 5.5, "units": 1}
    beacons = [
        b(at(0, 40), "order", order=first),
        b(at(0, 45), "order", order=reload),  # same visit, same order: adds nothing
        b(at(1, 5), "order", order=reload),  # carried into hour 1: still nothing
        b(at(1, 6), "order", order=other),
        b(at(3, 0), "order", order=reload),  # a new visit: o1 counts again
    ]
    hours = run_hours(spark, beacons, 4)
    assert [metric(h, "orders") for h in hours] == [1.0, 1.0, None, 1.0]
    assert [metric(h, "units") for h in hours] == [2.0, 1.0, None, 9.0]
    assert [metric(h, "revenue") for h in hours] == [10.0, 5.5, None, 99.0]


def test_a_visit_lasts_less_than_12_hours(spark):
    """A beacon every 30 minutes from 00:10 to 13:40, and 12:05: two visits, cut at 12:10."""
    first = {"order_id": "o1", "revenue": 10.0, "units": 1}
    beacons = [b(at(0, 10) + i * 30 * 60_000) for i in range(28)]
    beacons[1] = b(at(0, 40), "order", order=first)
    beacons[25] = b(at(12, 40), "order", order=first)  # the same order_id in the new visit
    beacons.append(b(at(12, 5)))  # the old visit's last beacon, in the hour of the cut
    sessions, by_hour = chain_sessions(spark, beacons, 15)  # sessionized once, for both
    hours = hourly_values(sessions, by_hour, 14)
    assert [metric(h, "visits") for h in hours] == [1.0] + [0.0] * 11 + [1.0, 0.0]
    assert [metric(h, "orders") for h in hours] == [1.0] + [0.0] * 11 + [1.0, 0.0]
    assert sum(metric(h, "page_views") for h in hours) == 27.0
    assert {r["visit_id"] for r in union_all(sessions).collect()} == {
        f"s1#{at(0, 10)}",
        f"s1#{at(12, 10)}",
    }
    hour12 = {r["visit_id"]: r["continued"] for r in sessions[12].collect()}
    assert hour12 == {f"s1#{at(0, 10)}": True, f"s1#{at(12, 10)}": False}


def test_single_page_view_continued_next_hour_is_not_a_bounce(spark):
    beacons = [
        b(at(0, 59), session="s1"),
        b(at(1, 30), "add_to_cart", session="s1"),
        b(at(0, 10), session="s2", visitor="v2"),  # a true bounce
        b(at(0, 20), "error", session="s3", visitor="v3"),  # single error: not a bounce
        b(at(0, 30), "order", session="s4", visitor="v4"),  # single order: not a bounce
    ]
    hour0, _ = run_hours(spark, beacons, 2)
    assert metric(hour0, "visits") == 4.0
    assert metric(hour0, "bounces") == 1.0
    assert metric(hour0, "errors") == 1.0
    assert metric(hour0, "visitors") == 4.0


def test_populations_assigned_and_qualified(spark):
    beacons = [
        b(at(0, 1), exps=[("exp", "A", False)]),
        b(at(0, 2), exps=[("exp", "A", True)]),  # first qualified beacon of the visit
        b(at(0, 3), exps=[("exp", "A", True)], perf={"page_load_ms": 300}),
        b(at(0, 4), session="s2", visitor="v2", exps=[("exp", "B", False), ("other", "x", True)]),
    ]
    (hour0,) = run_hours(spark, beacons, 1)
    assert metric(hour0, "page_views") == 3.0
    assert metric(hour0, "page_views", ("exp", "A", "qualified")) == 2.0
    assert metric(hour0, "visits", ("exp", "A", "qualified")) == 1.0
    assert metric(hour0, "page_load_ms_sum", ("exp", "A", "qualified")) == 300.0
    assert metric(hour0, "page_load_ms_count") == 1.0
    assert metric(hour0, "visits", ("exp", "B", "assigned")) == 1.0
    assert metric(hour0, "visits", ("exp", "B", "qualified")) is None  # no row of zeros
    assert metric(hour0, "bounces", ("other", "x", "qualified")) == 1.0


def test_visit_enters_a_population_late(spark):
    """A visit counts for P in the hour of its first beacon in P, not of its first beacon."""
    beacons = [b(at(0, 50), exps=[]), b(at(1, 5), exps=[("exp", "A", False)])]
    hour0, hour1 = run_hours(spark, beacons, 2)
    assert metric(hour0, "visits") is None
    assert metric(hour1, "visits") == 1.0
    assert metric(hour1, "bounces") == 0.0  # the visit has two beacons


def test_experiment_listed_twice_counts_first_entry(spark):
    beacons = [b(at(0, 1), exps=[("exp", "A", False), ("exp", "B", True)])]
    (hour0,) = run_hours(spark, beacons, 1)
    assert metric(hour0, "page_views") == 1.0
    assert metric(hour0, "page_views", ("exp", "B", "assigned")) is None
    assert metric(hour0, "page_views", ("exp", "A", "qualified")) is None


def test_visitors_and_visitors_24h(spark):
    beacons = [
        b(at(0, 1), session="s1", visitor="v1"),
        b(at(0, 2), session="s1", visitor="v1"),
        b(at(0, 3), session="s2", visitor="v2"),
        b(at(23, 5), session="s3", visitor="v3"),
        b(at(23, 6), session="s1b", visitor="v1"),
        b(at(24, 0), session="s4", visitor="v4"),
    ]
    hours = run_hours(spark, beacons, 25)
    assert metric(hours[0], "visitors") == 2.0
    assert metric(hours[0], "visitors_24h") == 2.0
    assert metric(hours[23], "visitors") == 2.0
    assert metric(hours[23], "visitors_24h") == 3.0  # v1, v2 (hour 0) and v3
    assert metric(hours[24], "visitors_24h") == 3.0  # hour 0 has left the window: v1, v3, v4
    assert all(metric(hours[h], "visitors_24h") is None for h in range(1, 23))


def _generated_beacons(spark, visitors: int, hours: int, seen_in: int):
    """`visitors` visitors of experiment exp, each with `seen_in` beacons in hours 0..hours-1
    (picked by hash, so most visitors are seen in `seen_in` different hours).

    Visitor i is in variant A (B when i is odd) and qualified when i % 3 == 0.
    """
    ids = spark.range(visitors * seen_in).select(
        (F.col("id") % visitors).alias("i"), F.floor(F.col("id") / visitors).alias("k")
    )
    return ids.select(
        F.concat(F.lit("v-"), F.col("i").cast("string")).alias("visitor_id"),
        F.pmod(F.xxhash64("i", "k"), F.lit(hours)).alias("hour"),
        F.array(
            F.struct(
                F.lit("exp").alias("id"),
                F.when(F.col("i") % 2 == 1, "B").otherwise("A").alias("variant"),
                (F.col("i") % 3 == 0).alias("qualified"),
            )
        ).alias("experiments"),
    )


def test_sketches_estimate_distinct_visitors_within_the_allowed_2_percent(spark):
    """Hourly sketches merged over a day: visitors seen in several hours count once."""
    beacons = _generated_beacons(spark, visitors=300_000, hours=24, seen_in=3)
    day = visitor_sketches(beacons, "hour").localCheckpoint()  # one sketch per key and hour
    assert day.count() == 24 * 4
    estimate = {
        (r["experiment"], r["variant"], r["population"]): r["v"]
        for r in estimated_visitors(day, "v").collect()
    }
    exact = {  # 150,000 per variant; a third of them qualified
        ("exp", "A", "assigned"): 150_000,
        ("exp", "B", "assigned"): 150_000,
        ("exp", "A", "qualified"): 50_000,
        ("exp", "B", "qualified"): 50_000,
    }
    assert set(estimate) == set(exact)
    for key, count in exact.items():
        assert abs(estimate[key] - count) <= 0.02 * count, (key, estimate[key])
    # Without the merge, the hours' distinct visitors add up to nearly three times as many.
    (per_hour,) = day.agg(F.sum(F.hll_sketch_estimate("sketch"))).first()
    assert per_hour > 2.5 * 400_000
    # Merging a sketch again (a replayed batch) changes nothing.
    hours_again = day.where(F.col("hour").isin(0, 5)).drop("hour")
    again = estimated_visitors(union_all([merge_sketches(day), hours_again]), "v")
    assert {(r["experiment"], r["variant"], r["population"]): r["v"] for r in again.collect()} == (
        estimate
    )


def test_small_sketches_are_exact(spark):
    """Below a few thousand visitors a sketch holds the visitors themselves: no error."""
    beacons = _generated_beacons(spark, visitors=3_000, hours=24, seen_in=2)
    (row,) = (
        estimated_visitors(visitor_sketches(beacons).where(F.col("population") == "assigned"), "v")
        .where(F.col("variant") == "A")
        .collect()
    )
    assert row["v"] == 1_500


def _visitors(spark, *visitor_ids: str):
    """Beacons of these visitors in experiment exp, variant A, not qualified."""
    rows = [(v, [("exp", "A", False)]) for v in visitor_ids]
    return spark.createDataFrame(rows, f"visitor_id string, experiments {bc.EXPERIMENTS_TYPE}")


def test_an_hour_without_sketches_is_sketched_from_its_beacons(spark):
    beacons = {0: _visitors(spark, "v1", "v2"), 1: _visitors(spark, "v2", "v3", "v4")}
    kept = {0: visitor_sketches(beacons[0])}  # hour 1 has its beacons but no sketches
    asked: dict[str, list] = {"sketches": [], "beacons": []}

    def sketches_of(hours):
        asked["sketches"].append(hours)
        return union_all([kept[h] for h in hours])

    def beacons_of(hours):
        asked["beacons"].append(hours)
        return union_all([beacons[h] for h in hours])

    day = sketches_of_hours([0, 1], lambda h: h in kept, sketches_of, beacons_of)
    assert asked == {"sketches": [[0]], "beacons": [[1]]}
    (row,) = estimated_visitors(day, "v").where(F.col("population") == "assigned").collect()
    assert row["v"] == 4  # v2, seen in both hours, counts once
    # With every hour sketched the beacons are never read, and the other way round.
    asked = {"sketches": [], "beacons": []}
    sketches_of_hours([0], lambda h: True, sketches_of, beacons_of)
    sketches_of_hours([0, 1], lambda h: False, sketches_of, beacons_of)
    assert asked == {"sketches": [[0]], "beacons": [[0, 1]]}


def test_an_estimate_is_never_below_the_exact_count(spark):
    df = spark.createDataFrame([(None, 3), (2, 3), (5, 3)], "estimate long, exact long")
    raised = df.select(at_least_exact("estimate", "exact")).collect()
    assert [r[0] for r in raised] == [3, 3, 5]  # no estimate at all: the exact count
    counted = exact_visitors(_visitors(spark, "v1", "v2", "v1"), "n").collect()
    assert {(r["population"], r["n"]) for r in counted} == {("assigned", 2)}


def test_sessions_rows_carry_state(spark):
    beacons = [b(at(0, 55), "order"), b(at(1, 5))]
    lines = spark.createDataFrame([(json.dumps(x),) for x in beacons[:1]], "value string")
    counted = bc.counted_beacons(bc.classify_hour(lines, hour_start_ms(H0) // HOUR_MS))
    rows = build_sessions(counted, spark.createDataFrame([], SESSIONS_SCHEMA), hour_start_ms(H0))
    (row,) = rows.collect()
    assert row["visit_id"] == f"s1#{at(0, 55)}"
    assert (row["beacon_count"], row["order_ids"], row["continued"]) == (1, ["o1"], False)
    assert sorted(p["population"] for p in row["populations"]) == ["assigned", "qualified"]
    hour1 = H0 + timedelta(hours=1)
    lines = spark.createDataFrame([(json.dumps(beacons[1]),)], "value string")
    counted = bc.counted_beacons(bc.classify_hour(lines, hour_start_ms(hour1) // HOUR_MS))
    (row1,) = build_sessions(counted, rows, hour_start_ms(hour1)).collect()
    assert row1["visit_id"] == row["visit_id"]
    assert (row1["beacon_count"], row1["continued"], row1["first_ts"]) == (2, True, at(0, 55))
    assert row1["order_ids"] == ["o1"]
    assert rows.where(F.size("facts") > 0).count() == 1


def test_after_a_12_hour_cut_the_newer_open_visit_continues(spark):
    """Hour 12 ends with two open visits of s1: the one cut at 12 hours (last beacon 12:29)
    and the one the cut started (12:31). A beacon at 13:00:30 is within 35 minutes of both;
    it continues the newer visit, and the populations it already started count no new start."""
    pop = ("exp", "A", "assigned")
    previous = spark.createDataFrame(
        [
            (f"s1#{at(0, 30)}", "s1", "v1", at(0, 30), at(12, 29), 25, True, ["o1"], [pop], []),
            (f"s1#{at(12, 31)}", "s1", "v1", at(12, 31), at(12, 31), 1, False, [], [pop], []),
        ],
        SESSIONS_SCHEMA,
    )
    hour13 = H0 + timedelta(hours=13)
    order = {"order_id": "o1", "revenue": 4.0, "units": 1}
    lines = spark.createDataFrame(
        [(json.dumps(b(at(13, 0.5), "order", order=order)),)], "value string"
    )
    counted = bc.counted_beacons(bc.classify_hour(lines, hour_start_ms(hour13) // HOUR_MS))
    (row,) = build_sessions(counted, previous, hour_start_ms(hour13)).collect()
    assert row["visit_id"] == f"s1#{at(12, 31)}"
    assert (row["continued"], row["first_ts"], row["beacon_count"]) == (True, at(12, 31), 2)
    assert row["order_ids"] == ["o1"]  # o1 was the other visit's: it counts in this one
    facts = {(f["experiment"], f["variant"], f["population"]): f for f in row["facts"]}
    assert (facts[pop]["visit_starts"], facts[pop]["orders"], facts[pop]["revenue"]) == (0, 1, 4.0)
    qualified = facts[("exp", "A", "qualified")]  # new to this visit in this hour
    assert (qualified["visit_starts"], qualified["bounce_candidates"]) == (1, 0)
