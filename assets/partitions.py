"""The hourly and daily partitions every batch asset shares."""

from __future__ import annotations

from datetime import date, datetime

import dagster as dg

from expo_platform.core.hours import KEY_FORMAT, parse_hour
from expo_platform.settings import load_settings

HOURLY = dg.HourlyPartitionsDefinition(
    start_date=load_settings().partitions_start.strftime(KEY_FORMAT), fmt=KEY_FORMAT
)

DAILY = dg.DailyPartitionsDefinition(
    start_date=load_settings().partitions_start.strftime("%Y-%m-%d")
)


def partition_day(context: dg.AssetExecutionContext) -> date:
    """The day of the daily partition being materialized."""
    return date.fromisoformat(context.partition_key)


def partition_hour(context: dg.AssetExecutionContext) -> datetime:
    """The hour of the partition being materialized."""
    return parse_hour(context.partition_key)
