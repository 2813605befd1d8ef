"""What every step of a micro-batch works with: `BatchContext`."""

from __future__ import annotations

from dataclasses import dataclass

from pyspark.sql import SparkSession

from expo_platform.serving.store import MetricStore
from expo_platform.settings import Settings
from expo_platform.speed.files import StreamFiles
from expo_platform.speed.step_times import StepTimes


@dataclass
class BatchContext:
    """The Spark session, settings, files, store and step timer of the batch in flight.

    `key` is the batch's `<epoch>-<batch id>`. `writes` is false on a standby region: it
    keeps its own state but writes nothing shared (landing zone, store).
    """

    spark: SparkSession
    settings: Settings
    files: StreamFiles
    store: MetricStore
    step: StepTimes
    key: str
    writes: bool = True
