"""Step 2 of a micro-batch: which beacons count, and the batch's folder of counted beacons.

A valid beacon more than the watermark behind the newest event time seen before the batch
is late: counted as `beacons_late`, landed, left out of the metrics. Of the others, the
on-time beacons, an `event_id` that an earlier batch counted in the same event hour is a
duplicate, and within the batch the first by `(ts, raw)` counts: the batch layer's rule
(`beacons.mark_duplicates`), which compares the event ids of one landing hour. A re-sent
beacon repeats its `ts`, so it falls in the hour of its first sighting.

The event ids of earlier batches are the counted-beacon folders of the hours the batch
touches: the de-duplication state is bounded by event time (no on-time beacon is older
than the watermark, and the folders are kept 26 hours), needs no state store, and survives a
lost checkpoint. A replayed batch compares against the batches before it, never itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from expo_platform import lake
from expo_platform.core import beacons as bc
from expo_platform.core.hours import parse_hour
from expo_platform.lake import STREAM_BEACONS
from expo_platform.speed.context import BatchContext
from expo_platform.speed.files import EVENT_HOUR, by_hour


@dataclass
class Counted:
    """The batch's beacons, classified (`reason` null = counted, or `late`)."""

    classified: DataFrame  # every beacon, with late ones marked (duplicates not yet)
    on_time: DataFrame  # valid and not late: counted or duplicate
    counted: DataFrame  # on time and the first sighting of its event_id in its hour
    hours: list[datetime]  # the event hours of the on-time beacons


def classify(ctx: BatchContext, beacons: DataFrame, watermark: int | None) -> Counted:
    """Mark late beacons, then find the counted ones among the others."""
    valid = F.col("reason").isNull()
    late = valid & (F.col("ts") < F.lit(watermark)) if watermark is not None else F.lit(False)
    classified = beacons.withColumn(
        "reason", F.when(late, F.lit(bc.LATE)).otherwise(F.col("reason"))
    )
    on_time = classified.where(F.col("reason").isNull())
    hours = [parse_hour(r[0]) for r in on_time.select(EVENT_HOUR).distinct().collect()]
    seen = _counted_before(ctx, on_time, hours).withColumn("_seen", F.lit(True))
    checked = bc.mark_duplicates(on_time, EVENT_HOUR).join(seen, [EVENT_HOUR, "event_id"], "left")
    counted = checked.where(F.col("reason").isNull() & F.col("_seen").isNull()).drop("_seen")
    return Counted(classified, on_time, counted, sorted(hours))


def _counted_before(ctx: BatchContext, on_time: DataFrame, hours: list[datetime]) -> DataFrame:
    """(EVENT_HOUR, event_id) of the batch's on-time beacons that an earlier batch counted."""
    paths = {h: ctx.files.beacon_paths(h, ctx.key, inclusive=False) for h in hours}
    earlier = [hour for hour in hours if paths[hour]]
    if not earlier:
        return on_time.select(EVENT_HOUR, "event_id").limit(0)
    ids = by_hour(
        earlier, lambda hour: STREAM_BEACONS.read(ctx.spark, paths[hour]).select("event_id")
    )
    mine = on_time.select(EVENT_HOUR, "event_id")
    return ids.join(mine, [EVENT_HOUR, "event_id"], "left_semi").distinct()


def write(ctx: BatchContext, counted: DataFrame) -> None:
    """The batch's counted beacons by event hour; the folder is replaced as a whole (static
    overwrite writes its _SUCCESS), so a replayed batch writes the same folder."""
    writer = counted.select(*bc.BEACON_COLUMNS, EVENT_HOUR).write
    writer.mode("overwrite").option("partitionOverwriteMode", "static").partitionBy(
        EVENT_HOUR
    ).parquet(str(ctx.files.counted_folder(ctx.key)))


def rows_by_hour(ctx: BatchContext) -> dict[str, int]:
    """Counted beacons of the batch per hour key, from the Parquet footers (no Spark job)."""
    return lake.parquet_rows_by_partition(ctx.files.counted_folder(ctx.key))
