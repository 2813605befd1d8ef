"""The experiment metrics of an hour from the stream's sessions and sketches, with the batch
layer's `metrics.metrics_of_hour`, written as absolute values (layer `speed`)."""

from __future__ import annotations

from datetime import datetime

from expo_platform.core.hours import hour_iso
from expo_platform.core.metrics import EXPERIMENT_METRICS, metrics_of_hour
from expo_platform.serving.store import wide_points
from expo_platform.spark import object_hash_aggregate
from expo_platform.speed.context import BatchContext
from expo_platform.speed.retry import retry


def publish(ctx: BatchContext, hours: list[datetime]) -> None:
    """Write the experiment metrics of these hours (those with sessions)."""
    files, spark = ctx.files, ctx.spark
    for hour in hours:
        if not files.session_path(hour).is_dir():
            continue
        with object_hash_aggregate(spark):
            wide = metrics_of_hour(
                lambda hours: files.sessions(spark, hours),
                lambda hours: files.sketches(spark, hours),
                hour,
            ).collect()
        points = wide_points(wide, EXPERIMENT_METRICS, hour_iso(hour), "speed")
        retry(
            f"writing speed metrics of {hour_iso(hour)}",
            lambda points=points, hour=hour: ctx.store.replace(
                points, layer="speed", hours=[hour_iso(hour)], metrics=EXPERIMENT_METRICS
            ),
        )
