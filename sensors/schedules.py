"""The hourly schedule, the sensor that computes metrics once the next hour is in, and the one
that analyses a day once its last hour's metrics are final."""

from datetime import date, datetime, timedelta

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

    @dg.run_status_sensor(
        run_status=dg.DagsterRunStatus.SUCCESS,
        monitored_jobs=[hourly_ingest_job],
        request_job=hourly_metrics_job,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="When hour H is ingested, the metrics of H-1 are final: compute them.",
    )
    def metrics_after_ingest(context: dg.RunStatusSensorContext):
        """Request the metrics of the hour before the one just ingested."""
        key = context.dagster_run.tags.get("dagster/partition")
        if not key:
            return dg.SkipReason("the ingest run had no partition")
        previous = parse_hour(key) - ONE_HOUR
        if previous < batch.partitions_start:
            return dg.SkipReason(f"{key} is the first hour: no hour before it")
        return dg.RunRequest(
            run_key=f"metrics-{hour_key(previous)}", partition_key=hour_key(previous)
        )

    return [hourly_ingest_schedule, metrics_after_ingest]


@dg.run_status_sensor(
    run_status=dg.DagsterRunStatus.SUCCESS,
    monitored_jobs=[hourly_metrics_job],
    request_job=daily_analysis_job,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="When the metrics of a day's last hour are final, analyse that day.",
)
def analysis_after_last_hour(context: dg.RunStatusSensorContext):
    """Request the daily analysis of the day whose 23:00 metrics just succeeded."""
    key = context.dagster_run.tags.get("dagster/partition")
    if not key:
        return dg.SkipReason("the metrics run had no partition")
    day = day_completed_by(parse_hour(key))
    if day is None:
        return dg.SkipReason(f"{key} is not the last hour of a day")
    return dg.RunRequest(run_key=f"daily-{day}", partition_key=day.isoformat())


def day_completed_by(hour: datetime) -> date | None:
    """The day whose last hour's metrics make it final, if `hour` is that last hour."""
    return hour.date() if hour.hour == 23 else None
