"""Hourly experiment metrics (METRICS.md section 4) from the sessions rows of an hour."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from expo_platform.core.hours import ONE_HOUR
from expo_platform.core.visits import FACT_FIELDS, populations

KEY = ("experiment", "variant", "population")
# The facts of sessions rows sum to these metrics; visit starts become visits, and bounce
# candidates become bounces once the next hour shows the visit did not go on.
_FACT_TO_METRIC = {"visit_starts": "visits", "bounce_candidates": "bounces"}
SUMMED = tuple(_FACT_TO_METRIC.get(name, name) for name in FACT_FIELDS)
EXPERIMENT_METRICS = ("visitors", *SUMMED, "visitors_24h")
# HyperLogLog sketches of 2^16 registers: a relative standard error of about 0.4%, so the
# 2% METRICS.md allows for visitors_24h is five standard errors (2^12, Spark's default, is
# 1.6%: measured errors of 3.5% at 500,000 visitors). A sketch is at most 64 KiB.
SKETCH_LG_K = 16
SKETCHES_SCHEMA = "experiment string, variant string, population string, sketch binary"
# What two implementations of a metric may differ by, relative: the estimated one, 2%.
ALLOWED_ERROR = {"visitors_24h": 0.02}


def explode_facts(sessions: DataFrame) -> DataFrame:
    """One row per (visit, population, beacon visitor) from sessions rows."""
    return sessions.select("visit_id", F.inline("facts"))


def final_bounces(facts: DataFrame, next_sessions: DataFrame) -> DataFrame:
    """Bounce candidates become bounces unless the visit went on in the next hour.

    `next_sessions` may span several hours (a day's rows, for visitor facts): a visit that
    went on through several of them has a continued row in each, so the continued visit ids
    are made distinct, or the join would repeat every fact of the visit once per such hour.
    A bounce candidate is a visit of one beacon so far, so any later continued row of it is
    the one of the next hour.
    """
    continued = (
        next_sessions.where(F.col("continued"))
        .select("visit_id", F.lit(True).alias("went_on"))
        .distinct()
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


def _visitor_keys(beacons: DataFrame, *by: str) -> DataFrame:
    """One row per beacon and population of it: (`by` columns, visitor_id, KEY)."""
    return beacons.select(*by, "visitor_id", F.inline(populations(F.col("experiments"))))


def visitor_sketches(beacons: DataFrame, *by: str) -> DataFrame:
    """Per key (and `by` columns): a HyperLogLog sketch (`sketch`) of the beacons' visitor_ids.

    Sketches merge: the sketch of two sets of beacons is `merge_sketches` of theirs, and
    merging the same beacons twice changes nothing, so a replay keeps them right.
    """
    return (
        _visitor_keys(beacons, *by)
        .groupBy(*by, *KEY)
        .agg(F.hll_sketch_agg("visitor_id", SKETCH_LG_K).alias("sketch"))
    )


def exact_visitors(beacons: DataFrame, name: str) -> DataFrame:
    """Per key: the distinct visitors of the beacons, counted exactly, in column `name`."""
    return _visitor_keys(beacons).groupBy(*KEY).agg(F.count_distinct("visitor_id").alias(name))


def sketches_of_hours(
    hours: Iterable[datetime],
    sketched: Callable[[datetime], bool],
    sketches_of: Callable[[list[datetime]], DataFrame],
    beacons_of: Callable[[list[datetime]], DataFrame],
    *by: str,
) -> DataFrame:
    """The visitor sketches of these hours: the kept ones of every hour that has them
    (`sketched`), and for every other hour the sketches of its beacons (`visitor_sketches`,
    grouped by the `by` columns too). A re-run of an hour's beacons, a crash between the
    beacons and their sketches, or a lake from before sketches leaves an hour without them.

    `sketches_of` and `beacons_of` read a layer's rows of the hours they are given; neither
    is called with no hours, unless `hours` is empty.
    """
    hours = list(hours)
    kept = [hour for hour in hours if sketched(hour)]
    missing = [hour for hour in hours if hour not in kept]
    if not missing:
        return sketches_of(kept)
    rebuilt = visitor_sketches(beacons_of(missing), *by)
    return sketches_of(kept).unionByName(rebuilt) if kept else rebuilt


def at_least_exact(estimate: Column | str, exact: Column | str) -> Column:
    """An estimate of distinct visitors raised to an exact count of some of them (a day's
    visitors include its last hour's): a sketch's error must not put it below what is known."""
    return F.greatest(estimate, exact)


def merge_sketches(sketches: DataFrame, *by: str) -> DataFrame:
    """One sketch per key (and `by` columns): the union of the given sketches rows."""
    return sketches.groupBy(*by, *KEY).agg(F.hll_union_agg("sketch").alias("sketch"))


def estimated_visitors(sketches: DataFrame, name: str) -> DataFrame:
    """Per key: the distinct visitors of the union of the sketches rows, in column `name`."""
    return merge_sketches(sketches).select(*KEY, F.hll_sketch_estimate("sketch").alias(name))


def hourly_metrics(
    sessions: DataFrame, next_sessions: DataFrame, visitors_24h: DataFrame
) -> DataFrame:
    """Wide metrics per key for an hour: one column per metric of EXPERIMENT_METRICS.

    `sessions` are the hour's rows, `next_sessions` the next hour's (for bounces) and
    `visitors_24h` the distinct visitors of [H - 23h, H + 1h) per key (`estimated_visitors`
    of hourly sketches).
    """
    facts = final_bounces(explode_facts(sessions), next_sessions)
    hourly = facts.groupBy(*KEY).agg(
        F.count_distinct("visitor_id").alias("visitors"),
        *[F.sum(name).alias(name) for name in SUMMED],
    )
    # Only keys with beacons in the hour get a row. The day's visitors include the hour's: an
    # estimate below the exact count of the hour is raised to it.
    return (
        hourly.join(visitors_24h, list(KEY), "left")
        .withColumn("visitors_24h", at_least_exact("visitors_24h", "visitors"))
        .select(*KEY, *[F.col(m).cast("double").alias(m) for m in EXPERIMENT_METRICS])
    )


def day_window(hour: datetime) -> list[datetime]:
    """The hours [H - 23h, H] of visitors_24h, oldest first."""
    return [hour - ONE_HOUR * back for back in range(23, -1, -1)]


def metrics_of_hour(
    sessions_of: Callable[[list[datetime]], DataFrame],
    sketches_of: Callable[[list[datetime]], DataFrame],
    hour: datetime,
) -> DataFrame:
    """`hourly_metrics` of an hour, each layer reading its own rows by hours.

    The hour needs its own sessions rows and the next hour's (bounces); visitors_24h is
    `estimated_visitors` of the visitor sketches of `day_window(hour)`.
    """
    day = estimated_visitors(sketches_of(day_window(hour)), "visitors_24h")
    return hourly_metrics(sessions_of([hour]), sessions_of([hour + ONE_HOUR]), day)
