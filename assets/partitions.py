"""The hourly and daily partitions every batch asset shares, from the first hour setting."""

from __future__ import annotations

from datetime import date, datetime

import dagster as dg

from expo_platform.core.hours import KEY_FORMAT, parse_hour
from expo_platform.settings import Settings


def hourly_partitions(settings: Settings) -> dg.HourlyPartitionsDefinition:
    """One partition per UTC hour from EXPO_PARTITIONS_START."""
    start = settings.batch.partitions_start
    return dg.HourlyPartitionsDefinition(start_date=start.strftime(KEY_FORMAT), fmt=KEY_FORMAT)


def daily_partitions(settings: Settings) -> dg.DailyPartitionsDefinition:
    """One partition per UTC day from the day of EXPO_PARTITIONS_START."""
    return dg.DailyPartitionsDefinition(
        start_date=settings.batch.partitions_start.strftime("%Y-%m-%d")
    )


def partition_day(context: dg.AssetExecutionContext) -> date:
    """The day of the daily partition being materialized."""
    return date.fromisoformat(context.partition_key)


def partition_hour(context: dg.AssetExecutionContext) -> datetime:
    """The hour of the partition being materialized."""
    return parse_hour(context.partition_key)
