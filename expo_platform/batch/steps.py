"""The batch layer's steps for one hour: read inputs, call the business logic, write outputs.

Each step is what one Dagster asset runs; each returns plain figures for the asset's metadata.
Every write replaces a whole partition or a whole set of points: re-running gives the same lake.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time

from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from expo_platform import lake
from expo_platform.analysis.pre_period import visitor_totals
from expo_platform.analysis.scorecards import (
    VISITOR_METRICS,
    key_totals,
    totals_mismatches,
    visitor_daily,
)
from expo_platform.core import beacons as bc
from expo_platform.core.hours import HOUR_MS, ONE_HOUR, hour_iso, hour_label, hour_start_ms
from expo_platform.core.metrics import (
    EXPERIMENT_METRICS,
    KEY,
    metrics_of_hour,
    sketches_of_hours,
    visitor_sketches,
)
from expo_platform.core.visits import build_sessions
from expo_platform.errors import ExpoError
from expo_platform.serving.store import MetricStore, Point, quality_points, wide_points
from expo_platform.settings import Settings
from expo_platform.spark import object_hash_aggregate

log = logging.getLogger(__name__)

PREVIEW_ROWS = 10


@dataclass
class StepResult:
    """Figures of one step, shown as asset metadata and in the command line's progress."""

    hour: datetime
    counts: dict[str, int] = field(default_factory=dict)
    preview: dict[str, list[dict]] = field(default_factory=dict)  # table -> sample rows


def _sample(df: DataFrame, *columns: str | Column) -> list[dict]:
    """A few rows of a DataFrame for the asset's metadata preview."""
    return [r.asDict() for r in df.select(*columns).limit(PREVIEW_ROWS).collect()]


def process_beacons(spark: SparkSession, settings: Settings, hour: datetime) -> StepResult:
    """Validate and de-duplicate an hour's landing files into `beacons` and `beacon_rejects`."""
    files = lake.landing_files(settings, hour)
    if not files:
        log.info("hour %s has no landing files: an empty hour", hour_label(hour))
    classified = bc.classify_hour(
        lake.read_landing(spark, files), int(hour_start_ms(hour) // HOUR_MS)
    )
    # Only the quarantine keeps the raw text: the cache holds it for rejected lines alone.
    classified = classified.withColumn(
        "raw", F.when(F.col("reason").isNotNull(), F.col("raw"))
    ).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        # The hour's sketches describe the beacons being replaced: until process_sessions
        # writes new ones, visitors_24h sketches the hour from its beacons.
        lake.VISITOR_SKETCHES.remove_partition(settings, hour)
        lake.BEACONS.write_partition(bc.counted_beacons(classified), settings, hour)
        lake.BEACON_REJECTS.write_partition(bc.rejected_beacons(classified), settings, hour)
        counts = {"files": len(files), **bc.quality_counts(bc.reason_counts(classified))}
        preview = {
            "beacons": _sample(
                bc.counted_beacons(classified), "event_id", "visitor_id", "session_id", "ts", "type"
            ),
            "beacon_rejects": _sample(
                bc.rejected_beacons(classified),
                "reason",
                "detail",
                F.substring("raw", 1, 120).alias("raw"),
            ),
        }
    finally:
        classified.unpersist()
    return StepResult(hour, counts, preview)


def hour_quality_points(settings: Settings, spark: SparkSession, hour: datetime) -> list[Point]:
    """The hour's data-quality points (METRICS.md section 5), read back from the tables."""
    valid = lake.count_rows(lake.BEACONS.read_partitions(spark, settings, [hour]))
    rejects = bc.reason_counts(lake.BEACON_REJECTS.read_partitions(spark, settings, [hour]))
    counts = bc.quality_counts({None: valid, **rejects})
    return quality_points(counts, bc.QUALITY_METRICS, hour_iso(hour), "batch")


def write_quality(
    spark: SparkSession, settings: Settings, store: MetricStore, hour: datetime
) -> StepResult:
    """Write the hour's data-quality points, layer batch."""
    points = hour_quality_points(settings, spark, hour)
    store.replace(points, layer="batch", hours=[hour_iso(hour)], metrics=bc.QUALITY_METRICS)
    return StepResult(hour, {p.metric: int(p.value) for p in points})


def _require_previous_sessions(settings: Settings, hour: datetime) -> None:
    """Visits carry across hours, so hour H needs H-1's sessions unless H-1 had no data."""
    previous = hour - ONE_HOUR
    if previous < settings.batch.partitions_start or lake.SESSIONS.has_partition(
        settings, previous
    ):
        return
    if lake.landing_files(settings, previous):
        raise ExpoError(
            f"sessions of {hour_label(previous)} are not materialized: visits carry across "
            f"hours, so process from {hour_label(previous)} on"
        )


def process_sessions(spark: SparkSession, settings: Settings, hour: datetime) -> StepResult:
    """Sessionize an hour's beacons, continuing the visits open at the end of the hour before;
    sketch its visitors per experiment key (`visitor_sketches`, for visitors_24h)."""
    if not lake.BEACONS.has_partition(settings, hour):
        raise ExpoError(f"beacons of {hour_label(hour)} are not materialized yet")
    _require_previous_sessions(settings, hour)
    lake.ensure_sessions_table(spark, settings)
    beacons = lake.BEACONS.read_partitions(spark, settings, [hour])
    previous = lake.SESSIONS.read_partitions(spark, settings, [hour - ONE_HOUR])
    rows = build_sessions(beacons, previous, hour_start_ms(hour))
    lake.write_sessions(spark, settings, rows, hour)
    with object_hash_aggregate(spark):
        lake.VISITOR_SKETCHES.write_partition(visitor_sketches(beacons), settings, hour)
    written = lake.SESSIONS.read_partitions(spark, settings, [hour])
    summary = written.agg(
        F.count(F.lit(1)).alias("visits_active"),
        F.count(F.when(F.col("continued"), 1)).alias("visits_continued"),
        F.coalesce(F.sum(F.size("facts")), F.lit(0)).alias("fact_rows"),
    ).first()
    preview = _sample(
        written,
        "visit_id",
        "visitor_id",
        "beacon_count",
        "continued",
        F.size("facts").alias("facts"),
    )
    return StepResult(hour, summary.asDict(), {"sessions": preview})


def _require_final(settings: Settings, what: str, hours: list[datetime]) -> None:
    """Fail unless every hour has ended and has its sessions (or had no landing data)."""
    last = hours[-1]
    if last + ONE_HOUR > datetime.now(UTC):
        raise ExpoError(f"{what} are final only once hour {hour_label(last)} has ended")
    for needed in hours:
        # An hour without landing files is an empty hour: it has no sessions to wait for.
        if not lake.SESSIONS.has_partition(settings, needed) and lake.landing_files(
            settings, needed
        ):
            raise ExpoError(
                f"{what} need the sessions of {hour_label(needed)}, which are not materialized yet"
            )


def process_metrics(
    spark: SparkSession, settings: Settings, store: MetricStore, hour: datetime
) -> StepResult:
    """Compute the hour's experiment metrics and write them to the store as layer batch."""
    following = hour + ONE_HOUR
    _require_final(settings, f"experiment_metrics of {hour_label(hour)}", [hour, following])
    with object_hash_aggregate(spark):
        wide = metrics_of_hour(
            lambda hours: lake.SESSIONS.read_partitions(spark, settings, hours),
            lambda hours: _sketches(spark, settings, hours),
            hour,
        ).collect()
    points = wide_points(wide, EXPERIMENT_METRICS, hour_iso(hour), "batch")
    store.replace(points, layer="batch", hours=[hour_iso(hour)], metrics=EXPERIMENT_METRICS)
    shown = (*KEY, "visitors", "visits", "bounces", "orders", "revenue")
    preview = sorted(({k: r[k] for k in shown} for r in wide), key=lambda d: d["experiment"])
    return StepResult(
        hour, {"keys": len(wide), "points": len(points)}, {"experiment_metrics": preview[:20]}
    )


def _sketches(spark: SparkSession, settings: Settings, hours: list[datetime]) -> DataFrame:
    """The visitor sketches of these hours. An hour whose beacons were processed before
    sketches existed (or in between the two assets) is sketched from its beacons."""
    return sketches_of_hours(
        hours,
        lambda hour: lake.VISITOR_SKETCHES.has_partition(settings, hour),
        lambda hours: lake.VISITOR_SKETCHES.read_partitions(spark, settings, hours),
        lambda hours: lake.BEACONS.read_partitions(
            spark, settings, [h for h in hours if lake.BEACONS.has_partition(settings, h)]
        ),
    )


def process_visitor_daily(spark: SparkSession, settings: Settings, day: date) -> StepResult:
    """Per-visitor sums of a day for the scorecards; final once the next day's first hour is in."""
    first = datetime.combine(day, time(), UTC)
    hours = [first + ONE_HOUR * h for h in range(24)]
    following = first + ONE_HOUR * 24
    _require_final(settings, f"visitor_daily of {day}", [*hours, following])
    day_sessions = lake.SESSIONS.read_partitions(spark, settings, hours)
    later = lake.SESSIONS.read_partitions(spark, settings, [*hours, following])
    lake.VISITOR_DAILY.write_partition(visitor_daily(day_sessions, later), settings, day)
    written = lake.VISITOR_DAILY.read_days(spark, settings, [day])
    summary = written.agg(
        F.count(F.lit(1)).alias("rows"),
        F.count_distinct("visitor_id").alias("visitors"),
        F.count_distinct("experiment").alias("experiments"),
    ).first()
    preview = _sample(written.orderBy("experiment", "variant", "visitor_id"), "*")
    return StepResult(first, summary.asDict(), {"visitor_daily": preview})


def visitor_totals_of_day(spark: SparkSession, settings: Settings, day: date) -> DataFrame:
    """A day's per-visitor totals, whatever the experiments (`pre_period.visitor_totals`),
    from its counted beacons and the sessions rows of the day and the hours around it."""
    first = datetime.combine(day, time(), UTC)
    hours = [first + ONE_HOUR * h for h in range(24)]
    return visitor_totals(
        lake.BEACONS.read_partitions(spark, settings, hours),
        lake.SESSIONS.read_partitions(spark, settings, [first - ONE_HOUR, *hours]),
        lake.SESSIONS.read_partitions(spark, settings, [*hours, first + ONE_HOUR * 24]),
    )


def process_visitor_totals(spark: SparkSession, settings: Settings, day: date) -> StepResult:
    """Write a day's `visitor_totals`; final once the next day's first hour is in."""
    first = datetime.combine(day, time(), UTC)
    hours = [first + ONE_HOUR * h for h in range(25)]
    _require_final(settings, f"visitor_totals of {day}", hours)
    lake.VISITOR_TOTALS.write_partition(visitor_totals_of_day(spark, settings, day), settings, day)
    written = lake.VISITOR_TOTALS.read_days(spark, settings, [day])
    summary = written.agg(
        F.count(F.lit(1)).alias("visitors"),
        *[F.sum(m).alias(m) for m in ("visits", "orders")],
    ).first()
    counts = {k: int(v or 0) for k, v in summary.asDict().items()}
    preview = _sample(written.orderBy("visitor_id"), "*")
    return StepResult(first, counts, {"visitor_totals": preview})


def check_visitor_daily(
    spark: SparkSession, settings: Settings, store: MetricStore, day: date
) -> tuple[int, list[str]]:
    """Compare a day's visitor_daily sums with its hourly batch metrics in the store.

    Returns the number of keys compared and the mismatches (none when the day is right).
    """
    first = datetime.combine(day, time(), UTC)
    daily = lake.VISITOR_DAILY.read_days(spark, settings, [day])
    points = store.values(
        layer="batch", hour_from=hour_iso(first), hour_to=hour_iso(first + ONE_HOUR * 23)
    )
    hourly: dict[tuple, dict[str, float]] = {}
    for (metric, *key, _hour), value in points.items():
        if metric in VISITOR_METRICS:
            totals = hourly.setdefault(tuple(key), {})
            totals[metric] = totals.get(metric, 0.0) + value
    visitors = key_totals(daily)
    return len(set(visitors) | set(hourly)), totals_mismatches(visitors, hourly)
