"""Dagster resources: thin, typed wrappers around the library's settings and stores."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg
from dagster_pyspark import PySparkResource

from expo_platform.settings import Settings, load_settings
from expo_platform.store import MetricStore


class ExpoResource(dg.ConfigurableResource):
    """Where the lake and the Hive tables are, and the batch layer's thresholds."""

    lake: str
    hive_database: str = "expo"
    max_reject_rate: float = 0.1

    def settings(self) -> Settings:
        """The library settings: the environment's, with this resource's fields on top."""
        return load_settings(
            lake=Path(self.lake),
            hive_database=self.hive_database,
            max_reject_rate=self.max_reject_rate,
        )


class MetricStoreResource(dg.ConfigurableResource):
    """The metric store; the URL may carry a password, so it comes from the environment."""

    url: str

    def open(self) -> MetricStore:
        """A connected store; close it (or use it in a `with` block) when done."""
        return MetricStore(self.url)


def build_resources(settings: Settings) -> dict:
    """The resources of the code location, from the library settings."""
    return {
        "pyspark": PySparkResource(spark_config=settings.spark_config()),
        "expo": ExpoResource(
            lake=str(settings.lake),
            hive_database=settings.hive_database,
            max_reject_rate=settings.max_reject_rate,
        ),
        "metric_store": MetricStoreResource(
            url=dg.EnvVar("EXPO_METRIC_STORE")
            if os.environ.get("EXPO_METRIC_STORE")
            else settings.metric_store
        ),
    }
