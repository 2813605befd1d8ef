"""The hourly schedule, the sensor that computes metrics once the next hour is in, and the one
that analyses a day once its last hour's metrics are final."""

from collections.abc import Callable
from datetime import date, datetime, timedelta
from typing import Any

import dagster as dg

from expo_platform.core.hours import ONE_HOUR, hour_key, parse_hour, truncate_hour
from expo_platform.settings import Settings
from sensors.jobs import daily_analysis_job, hourly_ingest_job, hourly_metrics_job

CATCH_UP_HOURS = 6  # a daemon down for a few hours catches up by itself


def complete_hours(now: datetime, grace: timedelta, count: int) -> list[datetime]:
    """The newest `count` hours whose landing data is complete at `now`, oldest first."""
    newest = truncate_hour(now - grace) - ONE_HOUR
    return [newest - ONE_HOUR * back for back in range(count - 1, -1, -1)]


def ingest_cron(settings: Settings) -> str:
    """Once an hour at the grace minute, or every few minutes (a complete hour is then
    ingested within that many minutes of its grace; `make up`'s loop test uses 1)."""
    every = settings.batch.ingest_every_minutes
    if 0 < every < 60:
        return f"*/{every} * * * *"
    return f"{settings.batch.landing_grace_minutes % 60} * * * *"


def build_schedules(settings: Settings) -> list:
    """The hourly ingest schedule and the sensor that computes an hour's metrics once the
    next hour is ingested, for the partitions and grace of `settings`."""
    batch = settings.batch

    @dg.schedule(
        job=hourly_ingest_job,
        cron_schedule=ingest_cron(settings),
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus(batch.hourly_schedule.upper()),
        description="Ingests the newest complete hours that are not materialized yet.",
    )
    def hourly_ingest_schedule(context: dg.ScheduleEvaluationContext):
        """Request an ingest run for each complete, not yet ingested hour of the last few."""
        done = context.instance.get_materialized_partitions(dg.AssetKey("sessions"))
        hours = complete_hours(
            context.scheduled_execution_time,
            timedelta(minutes=batch.landing_grace_minutes),
            CATCH_UP_HOURS,
        )
        wanted = [h for h in hours if h >= batch.partitions_start and hour_key(h) not in done]
        if not wanted:
            return dg.SkipReason("every complete hour is ingested")
        return [
            dg.RunRequest(run_key=f"ingest-{hour_key(h)}", partition_key=hour_key(h))
            for h in wanted
        ]

    def hour_before(hour: datetime) -> str:
        previous = hour - ONE_HOUR
        if previous < batch.partitions_start:
            raise Skip(f"{hour_key(hour)} is the first hour: no hour before it")
        return hour_key(previous)

    metrics_after_ingest = chained_sensor(
        "metrics_after_ingest",
        hourly_ingest_job,
        hourly_metrics_job,
        "metrics",
        hour_before,
        "When hour H is ingested, the metrics of H-1 are final: compute them.",
    )
    return [hourly_ingest_schedule, metrics_after_ingest]


class Skip(Exception):
    """Raised by a chained sensor's rule: no run to request, for the reason given."""


def chained_sensor(
    name: str,
    monitored: Any,  # a job: defined, or an asset job resolved by Definitions
    requested: Any,
    run_key_prefix: str,
    follow: Callable[[datetime], str],
    description: str,
) -> dg.RunStatusSensorDefinition:
    """A sensor that, when a run of `monitored` for an hour succeeds, requests `requested` for
    the partition `follow(hour)` names (or skips for the reason `follow` raises)."""

    @dg.run_status_sensor(
        name=name,
        run_status=dg.DagsterRunStatus.SUCCESS,
        monitored_jobs=[monitored],
        request_job=requested,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=description,
    )
    def sensor(context: dg.RunStatusSensorContext):
        key = context.dagster_run.tags.get("dagster/partition")
        if not key:
            return dg.SkipReason(f"the {monitored.name} run had no partition")
        try:
            partition = follow(parse_hour(key))
        except Skip as skip:
            return dg.SkipReason(str(skip))
        return dg.RunRequest(run_key=f"{run_key_prefix}-{partition}", partition_key=partition)

    return sensor


def last_hour_of_day(hour: datetime) -> str:
    """The day whose analysis `hour`'s final metrics allow: its day when it is 23:00."""
    day = day_completed_by(hour)
    if day is None:
        raise Skip(f"{hour_key(hour)} is not the last hour of a day")
    return day.isoformat()


analysis_after_last_hour = chained_sensor(
    "analysis_after_last_hour",
    hourly_metrics_job,
    daily_analysis_job,
    "daily",
    last_hour_of_day,
    "When the metrics of a day's last hour are final, analyse that day.",
)


def day_completed_by(hour: datetime) -> date | None:
    """The day whose last hour's metrics make it final, if `hour` is that last hour."""
    return hour.date() if hour.hour == 23 else None
