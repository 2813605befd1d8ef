"""The stream's data-quality counts per event hour: what each batch saw, added up in its
`Progress`, and written to the store as absolute values (layer `speed`)."""

from __future__ import annotations

from collections import Counter

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from expo_platform.core import beacons as bc
from expo_platform.core.hours import hour_iso, parse_hour
from expo_platform.serving.store import quality_points
from expo_platform.speed.context import BatchContext
from expo_platform.speed.files import EVENT_HOUR, Progress
from expo_platform.speed.retry import retry

# The stream rejects what the batch layer does but `wrong_partition` (it has no landing hour).
STREAM_QUALITY = bc.quality_metrics(
    [r for r in bc.REJECT_REASONS if r != "wrong_partition"], late=True
)


def batch_counts(classified: DataFrame, counted: dict[str, int]) -> dict[str, dict[str, int]]:
    """Per hour key ("" for no event time): counts of this batch by metric.

    `counted` holds the counted beacons per hour key (`counted.rows_by_hour`, so the
    de-duplication is not computed twice); the on-time beacons not counted are duplicates.
    """
    by_hour: dict[str, dict[str | None, int]] = {}
    reasons = classified.groupBy(F.coalesce(EVENT_HOUR, F.lit("")).alias("h"), "reason").count()
    for r in reasons.collect():
        by_hour.setdefault(r["h"], {})[r["reason"]] = r["count"]
    for hour, by_reason in by_hour.items():
        on_time = by_reason.pop(None, 0)  # valid and not late: counted or duplicate
        by_reason[None] = counted.get(hour, 0)
        by_reason[bc.DUPLICATE] = on_time - counted.get(hour, 0)
    return {h: bc.quality_counts(r, STREAM_QUALITY) for h, r in by_hour.items()}


def add(before: dict, batch: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    """The counts per hour so far plus a batch's (its "" hour aside)."""
    totals = {h: dict(c) for h, c in before.items()}
    for h, counts in batch.items():
        if h:
            merged = Counter(totals.get(h, {}))
            merged.update(counts)
            totals[h] = dict(merged)
    return totals


def write(ctx: BatchContext, progress: Progress, hours: set[str]) -> None:
    """The counts so far of these hour keys into the store."""
    points = [
        point
        for h in sorted(hours - {""})
        for point in quality_points(
            progress.quality[h], STREAM_QUALITY, hour_iso(parse_hour(h)), "speed"
        )
    ]
    if points and ctx.writes:
        hour_list = sorted({p.hour for p in points})
        retry(
            "writing quality points",
            lambda: ctx.store.replace(
                points, layer="speed", hours=hour_list, metrics=STREAM_QUALITY
            ),
        )
