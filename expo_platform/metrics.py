"""Hourly experiment metrics (METRICS.md section 4) from the sessions rows of an hour."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from expo_platform.hours import ONE_HOUR
from expo_platform.store import Point
from expo_platform.visits import FACT_FIELDS

KEY = ("experiment", "variant", "population")
# The facts of sessions rows sum to these metrics; visit starts become visits, and bounce
# candidates become bounces once the next hour shows the visit did not go on.
_FACT_TO_METRIC = {"visit_starts": "visits", "bounce_candidates": "bounces"}
SUMMED = tuple(_FACT_TO_METRIC.get(name, name) for name in FACT_FIELDS)
EXPERIMENT_METRICS = ("visitors", *SUMMED, "visitors_24h")


def explode_facts(sessions: DataFrame) -> DataFrame:
    """One row per (visit, population, beacon visitor) from sessions rows."""
    return sessions.select("visit_id", F.inline("facts"))


def final_bounces(facts: DataFrame, next_sessions: DataFrame) -> DataFrame:
    """Bounce candidates become bounces unless the visit went on in the next hour."""
    continued = next_sessions.where(F.col("continued")).select(
        "visit_id", F.lit(True).alias("went_on")
    )
    return (
        facts.join(continued, "visit_id", "left")
        .withColumn(
            "bounces",
            F.when(F.col("went_on"), F.lit(0)).otherwise(F.col("bounce_candidates")),
        )
        .withColumn("visits", F.col("visit_starts"))
        .drop("went_on")
    )


def distinct_visitors(sessions: DataFrame) -> DataFrame:
    """Distinct (key, visitor) pairs of the given sessions rows."""
    return explode_facts(sessions).select(*KEY, "visitor_id").distinct()


def hourly_metrics(
    sessions: DataFrame, next_sessions: DataFrame, last_24h_sessions: DataFrame
) -> DataFrame:
    """Wide metrics per key for an hour: one column per metric of EXPERIMENT_METRICS.

    `sessions` are the hour's rows, `next_sessions` the next hour's (for bounces) and
    `last_24h_sessions` the rows of the hours [H - 23h, H] (for visitors_24h).
    """
    facts = final_bounces(explode_facts(sessions), next_sessions)
    hourly = facts.groupBy(*KEY).agg(
        F.count_distinct("visitor_id").alias("visitors"),
        *[F.sum(name).alias(name) for name in SUMMED],
    )
    rolling = (
        distinct_visitors(last_24h_sessions)
        .groupBy(*KEY)
        .agg(F.count(F.lit(1)).alias("visitors_24h"))
    )
    # Only keys with beacons in the hour get a row.
    return hourly.join(rolling, list(KEY), "left").select(
        *KEY, *[F.col(m).cast("double").alias(m) for m in EXPERIMENT_METRICS]
    )


def metrics_of_hour(
    sessions_of: Callable[[list[datetime]], DataFrame], hour: datetime
) -> DataFrame:
    """`hourly_metrics` of an hour, each layer reading its own sessions rows by hours.

    The hour needs its own rows, the next hour's (bounces) and the 24 hours up to it
    (visitors_24h).
    """
    window = [hour - ONE_HOUR * back for back in range(23, -1, -1)]
    return hourly_metrics(sessions_of([hour]), sessions_of([hour + ONE_HOUR]), sessions_of(window))


def wide_points(rows: list, hour: str, layer: str) -> list[Point]:
    """Store points of the collected rows of `hourly_metrics`, one per key and metric."""
    return [
        Point(m, r["experiment"], r["variant"], r["population"], hour, layer, float(r[m]))
        for r in rows
        for m in EXPERIMENT_METRICS
    ]
