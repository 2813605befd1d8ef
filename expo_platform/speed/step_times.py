"""Wall-clock seconds per named step of a micro-batch (the log line, `Progress.steps` and
the Spark UI's job descriptions all show them)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from pyspark.sql import SparkSession

JOB_DESCRIPTION = "spark.job.description"  # what the Spark UI shows for a job


class StepTimes:
    """Wall-clock seconds per named step of a micro-batch, summed when a step repeats.

    With a Spark session, the step also names the Spark jobs it runs ("<label>: <step>" in
    the Spark UI's job descriptions).
    """

    def __init__(self, label: str = "", spark: SparkSession | None = None) -> None:
        self.seconds: dict[str, float] = {}
        self.label = label
        self.spark = spark
        self.started = time.monotonic()

    def elapsed(self) -> float:
        """Seconds since the timer was made: the batch's start."""
        return time.monotonic() - self.started

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        context = self.spark.sparkContext if self.spark is not None else None
        before = None
        if context is not None:
            before = context.getLocalProperty(JOB_DESCRIPTION)
            context.setJobDescription(f"{self.label}: {name}")
        started = time.perf_counter()
        try:
            yield
        finally:
            spent = time.perf_counter() - started
            self.seconds[name] = round(self.seconds.get(name, 0.0) + spent, 3)
            if context is not None:
                context.setLocalProperty(JOB_DESCRIPTION, before)  # type: ignore[arg-type]

    def __str__(self) -> str:
        return " ".join(f"{name}={s:.1f}s" for name, s in self.seconds.items())
