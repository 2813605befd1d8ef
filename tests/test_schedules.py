"""The hourly schedule and the metrics sensor, evaluated with Dagster's own test contexts."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

import dagster as dg

from definitions import build_defs
from expo_platform.core.hours import parse_hour
from expo_platform.settings import load_settings
from sensors.schedules import analysis_after_last_hour, build_schedules, complete_hours

hourly_ingest_schedule, metrics_after_ingest = build_schedules(load_settings({}))


def test_complete_hours_respect_the_grace():
    now = datetime(2026, 3, 2, 10, 5, tzinfo=UTC)
    grace = timedelta(minutes=10)
    # at 10:05 hour 09 is not complete yet (its grace ends 10:10): the newest is 08
    assert complete_hours(now, grace, 2) == [
        parse_hour("2026-03-02T07"),
        parse_hour("2026-03-02T08"),
    ]
    assert complete_hours(now + timedelta(minutes=5), grace, 1) == [parse_hour("2026-03-02T09")]


def test_schedule_requests_unprocessed_complete_hours():
    with dg.instance_for_test() as instance:
        context = dg.build_schedule_context(
            instance=instance, scheduled_execution_time=datetime(2026, 3, 2, 10, 10, tzinfo=UTC)
        )
        requests = hourly_ingest_schedule(context)
    keys = [r.partition_key for r in requests]
    assert keys == [f"2026-03-02-0{h}" for h in range(4, 10)]
    assert [r.run_key for r in requests] == [f"ingest-{k}" for k in keys]


def _after_success(sensor, job: str, partition: str):
    """What `sensor` answers to a successful run of `job` for `partition`."""
    with dg.instance_for_test() as instance:
        run = dg.DagsterRun(job_name=job, run_id="r1", tags={"dagster/partition": partition})
        context = dg.build_run_status_sensor_context(
            sensor_name=sensor.name,
            dagster_instance=instance,
            dagster_run=run,
            dagster_event=dg.DagsterEvent(event_type_value="PIPELINE_SUCCESS", job_name=job),
        )
        return sensor(context)


def test_metrics_sensor_requests_the_hour_before():
    request = _after_success(metrics_after_ingest, "hourly_ingest", "2026-03-02-05")
    assert request.partition_key == "2026-03-02-04"
    assert request.run_key == "metrics-2026-03-02-04"
    first = _after_success(metrics_after_ingest, "hourly_ingest", "2026-01-01-00")
    assert first.skip_message == "2026-01-01-00 is the first hour: no hour before it"


def test_analysis_sensor_waits_for_the_last_hour_of_the_day():
    request = _after_success(analysis_after_last_hour, "hourly_metrics", "2026-03-02-23")
    assert (request.partition_key, request.run_key) == ("2026-03-02", "daily-2026-03-02")
    skipped = _after_success(analysis_after_last_hour, "hourly_metrics", "2026-03-02-22")
    assert skipped.skip_message == "2026-03-02-22 is not the last hour of a day"


def test_hourly_schedule_starts_in_the_state_the_settings_give():
    """EXPO_HOURLY_SCHEDULE decides the schedule's state when Dagster first loads it."""
    states = {
        setting: build_schedules(load_settings({"EXPO_HOURLY_SCHEDULE": setting}))[0].default_status
        for setting in ("running", "stopped")
    }
    assert states == {
        "running": dg.DefaultScheduleStatus.RUNNING,
        "stopped": dg.DefaultScheduleStatus.STOPPED,
    }


class WatchedEnviron(dict):
    """os.environ that records every read of a platform variable."""

    def __init__(self, values):
        super().__init__(values)
        self.read: list[str] = []

    def _seen(self, key):
        if str(key).startswith("EXPO_"):  # DAGSTER_HOME is Dagster's own to read
            self.read.append(key)

    def get(self, key, default=None):
        self._seen(key)
        return super().get(key, default)

    def __getitem__(self, key):
        self._seen(key)
        return super().__getitem__(key)

    def __contains__(self, key):
        self._seen(key)
        return super().__contains__(key)


def test_the_code_location_is_built_from_the_settings_alone(tmp_path, monkeypatch):
    """build_defs(settings) decides partitions, schedule, cadence and supervisor state, and
    neither building the definitions nor a schedule tick reads the environment."""
    settings = load_settings(
        {
            "EXPO_HOME": str(tmp_path),
            "EXPO_PARTITIONS_START": "2026-02-01T05",
            "EXPO_HOURLY_SCHEDULE": "stopped",
            "EXPO_INGEST_EVERY_MINUTES": "5",
            "EXPO_SUPERVISE": "on",
            "EXPO_SUPERVISOR_INTERVAL_SECONDS": "17",
            "EXPO_LANDING_GRACE_MINUTES": "30",
        }
    )
    environ = WatchedEnviron({**os.environ, "EXPO_PARTITIONS_START": "2030-01-01T00"})
    monkeypatch.setattr(os, "environ", environ)
    with dg.instance_for_test() as instance:
        defs = build_defs(settings)
        hourly = defs.resolve_job_def("hourly_ingest").partitions_def
        daily = defs.resolve_job_def("daily_analysis").partitions_def
        schedule = defs.resolve_schedule_def("hourly_ingest_schedule")
        supervisor = defs.resolve_sensor_def("streaming_supervisor")
        context = dg.build_schedule_context(
            instance=instance, scheduled_execution_time=datetime(2026, 2, 1, 8, 35, tzinfo=UTC)
        )
        requests = schedule(context)
    assert hourly.get_first_partition_key() == "2026-02-01-05"
    assert daily.get_first_partition_key() == "2026-02-01"
    assert schedule.cron_schedule == "*/5 * * * *"
    assert schedule.default_status == dg.DefaultScheduleStatus.STOPPED
    assert supervisor.minimum_interval_seconds == 17
    assert supervisor.default_status == dg.DefaultSensorStatus.RUNNING
    # 08:35 with a 30-minute grace: hours 05..07 are complete; 04 is before the first hour
    assert [r.partition_key for r in requests] == [
        "2026-02-01-05",
        "2026-02-01-06",
        "2026-02-01-07",
    ]
    assert environ.read == []
