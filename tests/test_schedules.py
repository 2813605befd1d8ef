"""The hourly schedule and the metrics sensor, evaluated with Dagster's own test contexts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import dagster as dg

from expo_platform.hours import parse_hour
from sensors.schedules import complete_hours, hourly_ingest_schedule, metrics_after_ingest


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
