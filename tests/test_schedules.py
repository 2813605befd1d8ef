"""The hourly schedule and the metrics sensor, evaluated with Dagster's own test contexts."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import dagster as dg

from expo_platform.core.hours import parse_hour
from sensors.schedules import complete_hours, hourly_ingest_schedule, metrics_after_ingest
from tests.helpers import PROJECT


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


def test_metrics_sensor_requests_the_hour_before():
    with dg.instance_for_test() as instance:
        run = dg.DagsterRun(
            job_name="hourly_ingest", run_id="r1", tags={"dagster/partition": "2026-03-02-05"}
        )
        context = dg.build_run_status_sensor_context(
            sensor_name="metrics_after_ingest",
            dagster_instance=instance,
            dagster_run=run,
            dagster_event=dg.DagsterEvent(
                event_type_value="PIPELINE_SUCCESS", job_name="hourly_ingest"
            ),
        )
        request = metrics_after_ingest(context)
    assert request.partition_key == "2026-03-02-04"
    assert request.run_key == "metrics-2026-03-02-04"


def test_hourly_schedule_starts_in_the_state_the_settings_give():
    """EXPO_HOURLY_SCHEDULE decides the schedule's state when Dagster first loads it."""
    probe = "from sensors.schedules import hourly_ingest_schedule as s; print(s.default_status)"
    states = {}
    for setting in ("running", "stopped"):
        env = {**os.environ, "EXPO_HOURLY_SCHEDULE": setting}
        done = subprocess.run(
            [sys.executable, "-c", probe], cwd=PROJECT, env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        states[setting] = done.stdout.strip()
    assert states == {
        "running": "DefaultScheduleStatus.RUNNING",
        "stopped": "DefaultScheduleStatus.STOPPED",
    }
