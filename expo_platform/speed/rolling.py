"""Rolling unique visitors, `visitors_rolling_1h` (exact) and `visitors_rolling_24h`
(sketched), per experiment, variant and population, stamped with the event-time minute."""

from __future__ import annotations

from datetime import UTC, datetime

from pyspark.sql import functions as F

from expo_platform import lake
from expo_platform.core.hours import HOUR_MS, hour_of_ms, hour_range
from expo_platform.core.metrics import (
    KEY,
    at_least_exact,
    estimated_visitors,
    exact_visitors,
    visitor_sketches,
)
from expo_platform.lake import STREAM_BEACONS
from expo_platform.serving.store import Point
from expo_platform.spark import object_hash_aggregate
from expo_platform.speed.context import BatchContext
from expo_platform.speed.files import MINUTE_MS
from expo_platform.speed.retry import retry

ROLLING_1H, ROLLING_24H = "visitors_rolling_1h", "visitors_rolling_24h"
ROLLING = (ROLLING_1H, ROLLING_24H)


def write_rolling(ctx: BatchContext, max_ts: int, upto: str) -> None:
    """Unique visitors of the last hour and day, stamped with the event-time minute, from
    the counted beacons and sketches of the batches up to `upto`.

    The window [end - 24h, end) ends at the minute after the newest event time. Its first
    and last hours are read as beacons, and the hours between them come from their sketches.
    The last 60 minutes are counted exactly from the beacons of their two hours; the filter
    on `ts` reaches the Parquet files, so of the hour before the last only the files of
    batches that hold its last minutes are read.
    """
    files, spark = ctx.files, ctx.spark
    end = (max_ts // MINUTE_MS + 1) * MINUTE_MS
    window = list(hour_range(hour_of_ms(end - 24 * HOUR_MS), hour_of_ms(end - 1)))
    edges = sorted({window[0], window[-1]})
    last_hours = sorted({hour_of_ms(end - HOUR_MS), window[-1]})

    def beacons(hours: list, start: int):
        paths = [p for hour in hours for p in files.beacon_paths(hour, upto)]
        return STREAM_BEACONS.read(spark, paths).where((F.col("ts") >= start) & (F.col("ts") < end))

    middle = files.sketches(spark, [h for h in window if h not in edges])
    edge_sketches = visitor_sketches(beacons(edges, end - 24 * HOUR_MS))
    day = estimated_visitors(lake.union_all([edge_sketches, middle]), ROLLING_24H)
    last_hour = exact_visitors(beacons(last_hours, end - HOUR_MS), ROLLING_1H)
    hour_count = F.coalesce(ROLLING_1H, F.lit(0))
    # The day's visitors include the last hour's: an estimate below that count is raised.
    with object_hash_aggregate(spark):
        rows = (
            day.join(last_hour, list(KEY), "left")
            .select(
                *KEY,
                hour_count.alias(ROLLING_1H),
                at_least_exact(ROLLING_24H, hour_count).alias(ROLLING_24H),
            )
            .collect()
        )
    if not rows:
        return
    stamp = datetime.fromtimestamp((end - MINUTE_MS) / 1000, UTC).strftime("%Y-%m-%dT%H:%M:00Z")
    points = [
        Point(name, r["experiment"], r["variant"], r["population"], stamp, "speed", float(r[name]))
        for r in rows
        for name in ROLLING
    ]
    retry("writing rolling visitors", lambda: ctx.store.upsert(points))
