"""The Dagster code location of Expo: `dagster dev -w workspace.yaml` loads `defs`."""

from __future__ import annotations

import dagster as dg

from assets.batch import build_batch_assets
from assets.partitions import daily_partitions, hourly_partitions
from assets.scorecards import build_analysis_assets
from assets.speed import SPEED_ASSETS, speed_metrics_fresh
from expo_platform.settings import Settings, load_settings
from resources import build_resources
from sensors.jobs import daily_analysis_job, hourly_ingest_job, hourly_metrics_job
from sensors.late_data import late_data_sensor
from sensors.run_watchdog import dead_run_workers
from sensors.schedules import analysis_after_last_hour, build_schedules
from sensors.supervisor import (
    alert_on_failed_check,
    alert_on_run_failure,
    build_batch_server_supervisor,
    build_supervisor,
    restart_batch_server_job,
    restart_streaming_job,
)


def build_defs(settings: Settings) -> dg.Definitions:
    """Every asset, job, schedule and sensor, and the resources, made from `settings` alone:
    nothing below reads the environment at import or tick time (secrets excepted, through
    `dg.EnvVar`)."""
    ingest_schedule, metrics_after_ingest = build_schedules(settings)
    return dg.Definitions(
        assets=[
            *build_batch_assets(hourly_partitions(settings)),
            *build_analysis_assets(daily_partitions(settings)),
            *SPEED_ASSETS,
        ],
        asset_checks=[speed_metrics_fresh],
        jobs=[
            hourly_ingest_job,
            hourly_metrics_job,
            daily_analysis_job,
            restart_streaming_job,
            restart_batch_server_job,
        ],
        schedules=[ingest_schedule],
        sensors=[
            metrics_after_ingest,
            analysis_after_last_hour,
            late_data_sensor,
            build_supervisor(settings),
            build_batch_server_supervisor(settings),
            alert_on_run_failure,
            alert_on_failed_check,
            dead_run_workers,
        ],
        resources=build_resources(settings),
        # A run's steps share one process and so one Spark session: the default executor
        # starts a process, and a JVM, per step (the UI backfill's runs: 41-64 s -> 18-25 s).
        executor=dg.in_process_executor,
    )


# The one place the code location reads the environment (EXPO_* and DAGSTER_HOME).
defs = build_defs(load_settings())
