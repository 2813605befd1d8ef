"""The late-data sensor: landing hours that changed after they were processed are redone.

The rules live in `expo_platform.batch.late_data`; this module reads the instance and requests runs.
"""

import hashlib

import dagster as dg

from expo_platform import lake
from expo_platform.batch.late_data import changed_hours, redo_plan
from expo_platform.core.hours import hour_key, parse_hour
from resources import SettingsParam
from sensors.jobs import hourly_ingest_job, hourly_metrics_job

LOOKBACK_HOURS = 48  # the newest processed hours that are watched
SIGNATURE = "landing_signature"


def recorded_signatures(instance: dg.DagsterInstance, keys: list[str]) -> dict[str, str]:
    """The landing fingerprint of the newest `beacons` materialization of each partition."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("beacons"), asset_partitions=keys),
        limit=len(keys) * 4 + 10,
    ).records
    found: dict[str, str] = {}
    for record in records:  # newest first
        key = record.partition_key
        metadata = record.asset_materialization.metadata if record.asset_materialization else {}
        if key and key not in found and SIGNATURE in metadata:
            found[key] = metadata[SIGNATURE].value
    return found


@dg.sensor(
    jobs=[hourly_ingest_job, hourly_metrics_job],
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Landing hours with new or modified files since they were processed: ingest "
    "them again, with the later hours and metrics that depend on them.",
)
def late_data_sensor(context: dg.SensorEvaluationContext, settings: SettingsParam):
    instance = context.instance
    ingested = sorted(instance.get_materialized_partitions(dg.AssetKey("sessions")))
    watched = sorted(instance.get_materialized_partitions(dg.AssetKey("beacons")))[-LOOKBACK_HOURS:]
    recorded = {parse_hour(k): v for k, v in recorded_signatures(instance, watched).items()}
    current = {h: lake.landing_signature(settings, h) for h in recorded}
    changed = changed_hours(recorded, current)
    if not changed:
        return dg.SkipReason(f"no late data in the {len(recorded)} newest processed hours")
    with_metrics = instance.get_materialized_partitions(dg.AssetKey("experiment_metrics"))
    requests = []
    for hour in changed:
        ingest, metrics = redo_plan(
            hour, (parse_hour(k) for k in ingested), (parse_hour(k) for k in with_metrics)
        )
        stamp = hashlib.sha1(current[hour].encode()).hexdigest()[:12]
        context.log.info(
            f"late data in {hour_key(hour)}: ingest {len(ingest)} hours, "
            f"metrics of {len(metrics)} hours again"
        )
        # Requested in dependency order; the run queue starts them in that order, and the
        # spark pool (limit 1) runs one at a time.
        for job, hours in ((hourly_ingest_job, ingest), (hourly_metrics_job, metrics)):
            for h in hours:
                requests.append(
                    dg.RunRequest(
                        run_key=f"late-{hour_key(hour)}-{stamp}-{job.name}-{hour_key(h)}",
                        job_name=job.name,
                        partition_key=hour_key(h),
                        tags={"expo/late_hour": hour_key(hour)},
                    )
                )
    return requests
