"""The visitor sketches of each event hour (HyperLogLog per experiment key), merged with
every batch's visitors: `visitors_24h` and the rolling 24 hours read them instead of a
day of beacons."""

from __future__ import annotations

import shutil
from datetime import datetime

from pyspark.sql import DataFrame

from expo_platform import lake
from expo_platform.core.metrics import merge_sketches, sketches_of_hours, visitor_sketches
from expo_platform.lake import STREAM_SKETCHES
from expo_platform.spark import object_hash_aggregate
from expo_platform.speed.context import BatchContext
from expo_platform.speed.files import EVENT_HOUR, by_hour


def update(ctx: BatchContext, on_time: DataFrame, hours: list[datetime]) -> None:
    """Merge the visitors of the batch's on-time beacons into their hours' sketches.

    Duplicates too: merging is idempotent, and a beacon an earlier epoch counted may be
    missing from the sketches (a crash between its counted write and its sketches, then a
    lost checkpoint). A replayed batch leaves the sketches as they were. An hour with
    counted beacons but no sketches folder (a crash mid-replace, a lake from before
    sketches) is sketched from all its counted beacons.
    """
    files, spark = ctx.files, ctx.spark
    missing = {h for h in files.hours_with_beacons(ctx.key) if not files.sketch_path(h).is_dir()}
    written = sorted(set(hours) | missing)
    if not written:
        return
    kept = sketches_of_hours(
        written,
        lambda hour: hour not in missing,
        lambda hours: by_hour(hours, lambda hour: files.sketches(spark, [hour])),
        lambda hours: by_hour(hours, lambda hour: files.beacons(spark, hour, ctx.key)),
        EVENT_HOUR,
    )
    merged = merge_sketches(
        lake.union_all([visitor_sketches(on_time, EVENT_HOUR), kept]), EVENT_HOUR
    )
    tmp = files.tmp_dir / f"sketches-{ctx.key}"
    with object_hash_aggregate(spark):
        merged.write.mode("overwrite").partitionBy(EVENT_HOUR).parquet(str(tmp))
    for hour in written:
        new = STREAM_SKETCHES.partition_in(tmp, hour)
        if not new.is_dir():  # no beacon of the hour is in an experiment: no sketches
            new.mkdir(parents=True)
        files.move_in(new, files.sketch_path(hour))
    shutil.rmtree(tmp, ignore_errors=True)
