"""Visitor-level facts for scorecards and trends (METRICS.md section 7), from sessions rows.

A scorecard over any range of days groups the `visitor_daily` rows by visitor; it never
goes back to the beacons.
"""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from expo_platform.core.hours import HOUR_MS, event_hour_index
from expo_platform.core.metrics import KEY, final_bounces

VISITOR_METRICS = ("page_views", "visits", "bounces", "orders", "units", "revenue", "errors")
VISITOR_DAILY_SCHEMA = (
    "experiment string, variant string, population string, visitor_id string, "
    + ", ".join(f"{m} {'double' if m == 'revenue' else 'long'}" for m in VISITOR_METRICS)
)


def _sums() -> list:
    """Sums of the visitor metrics, typed like VISITOR_DAILY_SCHEMA."""
    return [
        F.coalesce(F.sum(m), F.lit(0)).cast("double" if m == "revenue" else "long").alias(m)
        for m in VISITOR_METRICS
    ]


def visitor_facts(sessions: DataFrame, later_sessions: DataFrame, *by: str) -> DataFrame:
    """Per (key, visitor, *by) sums of the facts of `sessions`, bounces made final.

    `later_sessions` must hold the rows of the hour after each hour of `sessions`: a bounce
    candidate whose visit went on in the next hour is no bounce. `by` may name `hour_ms`,
    the start of the hour of the sessions row.
    """
    rows = sessions.withColumn("hour_ms", event_hour_index("last_ts") * HOUR_MS)
    facts = rows.select("visit_id", "hour_ms", F.inline("facts"))
    return final_bounces(facts, later_sessions).groupBy(*KEY, "visitor_id", *by).agg(*_sums())


def visitor_daily(day_sessions: DataFrame, later_sessions: DataFrame) -> DataFrame:
    """One row per (experiment, variant, population, visitor) of a day, its metric sums."""
    return visitor_facts(day_sessions, later_sessions)


def per_visitor(daily: DataFrame, experiment: str, population: str, *by: str) -> DataFrame:
    """Rows of one experiment and population summed per (variant, visitor, *by) over a range."""
    return (
        daily.where((F.col("experiment") == experiment) & (F.col("population") == population))
        .groupBy("variant", "visitor_id", *by)
        .agg(*_sums())
    )


def key_totals(daily: DataFrame) -> dict[tuple[str, str, str], dict[str, float]]:
    """Per (experiment, variant, population): each visitor metric summed over its visitors."""
    rows = daily.groupBy(*KEY).agg(*_sums()).collect()
    return {tuple(r[k] for k in KEY): {m: float(r[m]) for m in VISITOR_METRICS} for r in rows}


def totals_mismatches(
    visitor_totals: dict[tuple, dict[str, float]], hourly_totals: dict[tuple, dict[str, float]]
) -> list[str]:
    """Where the per-visitor sums of a range differ from the hourly metrics summed over it.

    METRICS.md section 7: before multi-variant visitors are excluded, they must be equal for
    every key and metric. Counts must match exactly; revenue is a sum of floats in another
    order, so it may differ in its last bits.
    """
    found = []
    for key in sorted(set(visitor_totals) | set(hourly_totals)):
        ours, theirs = visitor_totals.get(key, {}), hourly_totals.get(key, {})
        for metric in VISITOR_METRICS:
            a, b = ours.get(metric, 0.0), theirs.get(metric, 0.0)
            if abs(a - b) > (1e-9 * max(1.0, abs(b)) if metric == "revenue" else 0.0):
                found.append(f"{'/'.join(key)} {metric}: visitors {a:g}, hourly {b:g}")
    return found


def experiments_in(daily: DataFrame) -> list[tuple[str, str]]:
    """The (experiment, population) pairs present, sorted."""
    return sorted(
        (r["experiment"], r["population"])
        for r in daily.select("experiment", "population").distinct().collect()
    )
