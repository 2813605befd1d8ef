"""Per-visitor daily totals that do not depend on any experiment, and the CUPED covariates.

`visitor_totals` (the daily table of that name) holds, per visitor and day, the sums of the
visitor metrics over all of the visitor's counted beacons, tagged with experiments or not,
by the rules of METRICS.md: page views, errors and counted orders (with their units and
revenue) go to the beacon's own visitor; a visit to the visitor of its first beacon, in the
hour of that beacon; a bounce is a visit of exactly one beacon, a page view. For a visitor
all of whose beacons are in a population, the day's totals equal its `visitor_daily` sums.

The visits are those of the sessions table: the day's beacons are put into visits again
with the batch layer's own `assign_visits`, each hour against the visits its previous hour
left open, in one sort for the whole day (the session id is tagged with the hour).

The covariate of a visitor in an experiment is the sum of its `visitor_totals` over the N
days before its first exposure (the first day it has a `visitor_daily` row of the
experiment): days [first - N, first - 1]. A visitor without rows there has covariate 0.
"""

from __future__ import annotations

from datetime import date, timedelta

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from expo_platform.analysis.scorecards import VISITOR_METRICS
from expo_platform.core.hours import HOUR_MS, event_hour_index
from expo_platform.core.visits import VISIT_GAP_MS, assign_visits

VISITOR_TOTALS_SCHEMA = "visitor_id string, " + ", ".join(
    f"{m} {'double' if m == 'revenue' else 'long'}" for m in VISITOR_METRICS
)
PRE = "pre_"  # as stats.PRE: the covariate column of a metric


def _typed(name: str) -> str:
    return "double" if name == "revenue" else "long"


def visitor_totals(beacons: DataFrame, sessions: DataFrame, later_sessions: DataFrame) -> DataFrame:
    """One row per visitor with beacons in `beacons` (a day's counted beacons): its totals.

    `sessions` must hold the sessions rows of the hour before the day (visits it carries in);
    `later_sessions` those of the hour after it (bounce candidates it continues). Rows of
    other hours may be there too: only each hour's own carry and continuation are used.
    """
    hour = event_hour_index("ts")
    tagged = beacons.withColumns({"_session": F.col("session_id"), "_hour": hour}).withColumn(
        "session_id", F.concat_ws("@", "_session", F.col("_hour").cast("string"))
    )
    # A visit of hour h - 1 is carried into h when its last beacon is within 35 minutes of
    # h's start; it enters h's tagged session.
    next_hour = event_hour_index("last_ts") + 1
    carried = sessions.where(F.col("last_ts") >= next_hour * HOUR_MS - VISIT_GAP_MS).withColumn(
        "session_id", F.concat_ws("@", "session_id", next_hour.cast("string"))
    )
    visited = assign_visits(tagged, carried)
    counted = F.col("order_counted")
    per_beacon = visited.select(
        "visitor_id",
        (F.col("type") == "page_view").cast("long").alias("page_views"),
        F.lit(0).cast("long").alias("visits"),
        F.lit(0).cast("long").alias("bounces"),
        counted.cast("long").alias("orders"),
        F.when(counted, F.col("units")).otherwise(0).cast("long").alias("units"),
        F.when(counted, F.col("revenue")).otherwise(0.0).cast("double").alias("revenue"),
        (F.col("type") == "error").cast("long").alias("errors"),
    )
    # The visits that start in their hour (no carried state), with their first beacon.
    visits = (
        visited.groupBy("session_id", "visit_seq")
        .agg(
            F.first("carry", ignorenulls=True).alias("carry"),
            F.count(F.lit(1)).alias("beacons"),
            F.min(F.struct("ts", "event_id", "visitor_id", "type", "_session")).alias("first"),
        )
        .where(F.col("carry").isNull())
    )
    went_on = (
        later_sessions.where(F.col("continued"))
        .select("visit_id", F.lit(True).alias("went_on"))
        .distinct()
    )
    candidate = (F.col("beacons") == 1) & (F.col("first.type") == "page_view")
    per_visit = (
        visits.withColumn(
            "visit_id",
            F.concat(F.col("first._session"), F.lit("#"), F.col("first.ts").cast("string")),
        )
        .join(went_on, "visit_id", "left")
        .select(
            F.col("first.visitor_id").alias("visitor_id"),
            F.lit(0).cast("long").alias("page_views"),
            F.lit(1).cast("long").alias("visits"),
            (candidate & F.col("went_on").isNull()).cast("long").alias("bounces"),
            *[F.lit(0).cast(_typed(m)).alias(m) for m in ("orders", "units", "revenue", "errors")],
        )
    )
    return (
        per_beacon.unionByName(per_visit)
        .groupBy("visitor_id")
        .agg(*[F.sum(m).cast(_typed(m)).alias(m) for m in VISITOR_METRICS])
    )


def first_exposures(daily_by_day: DataFrame, experiment: str) -> DataFrame:
    """(visitor_id, first_day) of an experiment, from visitor_daily rows with a `day` column."""
    return (
        daily_by_day.where(F.col("experiment") == experiment)
        .groupBy("visitor_id")
        .agg(F.min("day").alias("first_day"))
    )


def covariates(exposures: DataFrame, totals_by_day: DataFrame, days: int) -> DataFrame:
    """(visitor_id, pre_<metric>...) for each exposed visitor: its visitor_totals summed over
    the `days` days before its first day; 0 where it had none."""
    window = (F.col("day") >= F.date_sub("first_day", days)) & (F.col("day") < F.col("first_day"))
    joined = exposures.join(totals_by_day, "visitor_id", "left").withColumn(
        "in_window", F.coalesce(window, F.lit(False))
    )
    return joined.groupBy("visitor_id").agg(
        *[
            F.coalesce(F.sum(F.when(F.col("in_window"), F.col(m))), F.lit(0))
            .cast(_typed(m))
            .alias(PRE + m)
            for m in VISITOR_METRICS
        ]
    )


def with_covariates(per_visitor: DataFrame, pre: DataFrame) -> DataFrame:
    """The per-visitor rows of a scorecard with their `pre_<metric>` columns (0 when absent)."""
    joined = per_visitor.join(pre, "visitor_id", "left")
    return joined.withColumns(
        {PRE + m: F.coalesce(F.col(PRE + m), F.lit(0).cast(_typed(m))) for m in VISITOR_METRICS}
    )


def pre_period_days(first: date, last: date, days: int) -> tuple[date, date]:
    """The days of visitor_totals that visitors first exposed in [first, last] may need."""
    return first - timedelta(days=days), last - timedelta(days=1)
