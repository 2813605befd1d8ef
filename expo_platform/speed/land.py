"""The micro-batch's raw messages into the landing zone (the batch layer's input), and the
messages without an event time into the stream's quarantine."""

from __future__ import annotations

import os
import shutil

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from expo_platform.lake import LANDING_COLUMN
from expo_platform.speed.context import BatchContext
from expo_platform.speed.files import EVENT_HOUR
from expo_platform.speed.lease import WriterLease


def land(
    ctx: BatchContext, beacons: DataFrame, ends: dict[int, int], lease: WriterLease | None
) -> None:
    """Raw messages into the landing zone by event hour, as
    `landing/beacons/hour=H/stream-<epoch>-<batch>-<n>.json` (a replayed batch writes the
    same files again).

    With a lease, only offsets no writer has landed yet; then the landed offsets move on.
    """
    files, topic = ctx.files, ctx.settings.stream.kafka_topic
    prefix = f"{ctx.settings.stream.region}-{ctx.key}" if lease else ctx.key
    for old in files.landing.glob(f"hour=*/stream-{prefix}-*.json"):
        old.unlink()
    tmp = files.tmp_dir / f"landing-{ctx.key}"
    shutil.rmtree(tmp, ignore_errors=True)
    dated = beacons.where(F.col(EVENT_HOUR).isNotNull())
    landed = lease.landed(topic) if lease else {}
    for partition, offset in landed.items():
        dated = dated.where((F.col("partition") != partition) | (F.col("offset") >= offset))
    dated.select(F.col(EVENT_HOUR).alias(LANDING_COLUMN), "raw").write.partitionBy(
        LANDING_COLUMN
    ).text(str(tmp))
    for folder in sorted(tmp.glob(f"{LANDING_COLUMN}=*")):
        target = files.landing / folder.name
        target.mkdir(parents=True, exist_ok=True)
        for i, part in enumerate(sorted(folder.glob("part-*"))):
            if part.stat().st_size:
                os.replace(part, target / f"stream-{prefix}-{i:03d}.json")
    shutil.rmtree(tmp, ignore_errors=True)
    if lease is not None and ends:
        lease.commit_landed(topic, ends)


def quarantine(ctx: BatchContext, beacons: DataFrame) -> None:
    """Messages without an event time, with their reason, in the stream's own files."""
    beacons.where(F.col(EVENT_HOUR).isNull()).select(
        "raw",
        "reason",  # set for each: `parse.parse_messages` rejects a valid one without an hour
        "detail",
        "partition",
        "offset",
    ).write.mode("overwrite").parquet(str(ctx.files.quarantine_dir / f"batch={ctx.key}"))
