"""Operations: the supervisors of the streaming app and of the batch layer's Spark Connect
server, their restart jobs, and alerts on failed runs and checks.

The rules live in `expo_platform.ops.supervision`; this module only wires them into Dagster.
"""

import json
import time

import dagster as dg

from assets.batch import METRICS_CHECKS
from assets.speed import freshness_evaluation, speed_metrics_fresh
from expo_platform.ops.alerts import Alert
from expo_platform.ops.supervision import (
    BATCH_SERVER,
    Observation,
    State,
    Thresholds,
    decide,
    observe,
    observe_batch_server,
    restart,
    restart_batch_server,
    speed_freshness,
)
from expo_platform.settings import Settings
from resources import AlertsResource, SettingsParam, StreamLauncherResource

RESTART_JOB = "restart_streaming"
REASONS_TAG = "expo/reasons"


@dg.op(description="Stop the streaming app gracefully if it still runs, then launch a new one.")
def restart_streaming_app(
    context: dg.OpExecutionContext,
    stream_launcher: StreamLauncherResource,
    alerts: AlertsResource,
    settings: SettingsParam,
) -> dg.Output:
    was_running, app = restart(stream_launcher.launcher(settings))
    return _restarted(context, alerts, "streaming app", "the streaming app", was_running, app.pid)


def _restarted(context, alerts: AlertsResource, what: str, whole: str, was_running, pid: int):
    """Log and alert a restart the supervisor requested (its reasons are in the run's tags)."""
    reasons = json.loads(context.run.tags.get(REASONS_TAG, "[]"))
    context.log.info(f"restarted {whole}: pid {pid}, the old one was running: {was_running}")
    alerts.send(
        Alert(
            f"{what} restarted",
            f"The supervisor restarted {whole}.",
            "warning",
            {"reasons": "; ".join(reasons) or "requested", "pid": str(pid)},
        )
    )
    return dg.Output(pid, metadata={"pid": pid, "was_running": was_running})


@dg.job(name=RESTART_JOB, description="Restart the streaming app (requested by the supervisor).")
def restart_streaming_job():
    restart_streaming_app()


RESTART_SERVER_JOB = "restart_batch_server"


@dg.op(description="Stop the Spark Connect server if it still runs, then start a new one.")
def restart_batch_server_op(
    context: dg.OpExecutionContext, alerts: AlertsResource, settings: SettingsParam
) -> dg.Output:
    was_running, server = restart_batch_server(settings)
    whole = "the Spark Connect server of the batch layer"
    return _restarted(context, alerts, "batch server", whole, was_running, server.pid)


@dg.job(
    name=RESTART_SERVER_JOB,
    description="Restart the batch layer's Spark Connect server (requested by its supervisor).",
)
def restart_batch_server_job():
    restart_batch_server_op()


def _restart_in_flight(context: dg.SensorEvaluationContext, job: str = RESTART_JOB) -> bool:
    runs = context.instance.get_runs(
        dg.RunsFilter(
            job_name=job,
            statuses=[
                dg.DagsterRunStatus.QUEUED,
                dg.DagsterRunStatus.NOT_STARTED,
                dg.DagsterRunStatus.STARTING,
                dg.DagsterRunStatus.STARTED,
            ],
        ),
        limit=1,
    )
    return bool(runs)


def build_supervisor(settings: Settings) -> dg.SensorDefinition:
    """The streaming supervisor sensor, ticking every EXPO_SUPERVISOR_INTERVAL_SECONDS, running
    from the start when EXPO_SUPERVISE=on."""

    @dg.sensor(
        job=restart_streaming_job,
        minimum_interval_seconds=settings.supervisor.interval_seconds,
        # Off unless EXPO_SUPERVISE=on (`make up`): a supervisor that finds no app starts one.
        default_status=dg.DefaultSensorStatus.RUNNING
        if settings.supervisor.supervise == "on"
        else dg.DefaultSensorStatus.STOPPED,
        description="Watches the streaming app (Spark UI REST API, Kafka lag); restarts it "
        "when unhealthy, within a budget per hour; alerts.",
    )
    def streaming_supervisor(
        context: dg.SensorEvaluationContext,
        alerts: AlertsResource,
        stream_launcher: StreamLauncherResource,
    ):
        now = time.time()
        if _restart_in_flight(context):
            return dg.SensorResult(
                skip_reason="a restart of the streaming app is in progress",
                asset_events=speed_layer_events(settings, now, None),
            )
        observation = observe(settings, stream_launcher.launcher(settings), now)
        events = speed_layer_events(settings, now, observation)
        return _tick(context, alerts, settings, observation, now, "the streaming app", events)

    return streaming_supervisor


def build_batch_server_supervisor(settings: Settings) -> dg.SensorDefinition:
    """The supervisor of the Spark Connect server, with the streaming supervisor's rules,
    interval and restart budget; running from the start when EXPO_SUPERVISE=on and the batch
    layer uses a server (EXPO_SPARK_REMOTE, as under `make up`)."""
    watched = settings.supervisor.supervise == "on" and bool(settings.spark.remote)

    @dg.sensor(
        name="batch_server_supervisor",
        job=restart_batch_server_job,
        minimum_interval_seconds=settings.supervisor.interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING
        if watched
        else dg.DefaultSensorStatus.STOPPED,
        description="Watches the batch layer's Spark Connect server (its Spark UI REST API "
        "and process); restarts it when absent or stuck, within a budget per hour; alerts.",
    )
    def batch_server_supervisor(context: dg.SensorEvaluationContext, alerts: AlertsResource):
        now = time.time()
        if _restart_in_flight(context, RESTART_SERVER_JOB):
            return dg.SkipReason("a restart of the batch server is in progress")
        observation = observe_batch_server(settings, now)
        return _tick(context, alerts, settings, observation, now, BATCH_SERVER, [])

    return batch_server_supervisor


def _tick(
    context: dg.SensorEvaluationContext,
    alerts: AlertsResource,
    settings: Settings,
    observation: Observation,
    now: float,
    subject: str,
    events: list,
) -> dg.SensorResult:
    """One supervisor tick after its observation: decide, keep the state in the cursor,
    then skip, alert, or request a restart run."""
    decision = decide(
        observation, Thresholds.of(settings), State.from_cursor(context.cursor), now, subject
    )
    context.log.info(decision.summary())
    context.update_cursor(decision.cursor())
    if decision.action == "ok":
        return dg.SensorResult(skip_reason=decision.summary(), asset_events=events)
    if decision.action == "alert" and decision.notify:
        alerts.send(
            Alert(
                f"{subject.removeprefix('the ')} unhealthy, not restarted",
                "; ".join(decision.reasons),
                "critical",
                {"figures": decision.summary()},
            )
        )
    if decision.action == "alert":
        return dg.SensorResult(skip_reason=decision.summary(), asset_events=events)
    request = dg.RunRequest(
        run_key=f"restart-{observation.app_id or 'absent'}-{int(now)}",
        tags={REASONS_TAG: json.dumps(decision.reasons)},
    )
    return dg.SensorResult(run_requests=[request], asset_events=events)


def _observation(asset: str, **figures) -> dg.AssetObservation:
    """An observation of a speed-layer asset; figures the tick could not read are left out."""
    return dg.AssetObservation(
        asset_key=asset, metadata={k: v for k, v in figures.items() if v is not None}
    )


def speed_layer_events(settings: Settings, now: float, seen: Observation | None) -> list:
    """What every tick records on the speed layer's assets: the last micro-batch and its
    freshness (from the stream's own files), the rates the Spark UI gave (`seen`), the lag,
    the newest landed hour, and the freshness check."""
    fresh = speed_freshness(settings)
    landed = sorted(p.name for p in settings.lake.landing_dir.glob("hour=*"))
    ui = seen or Observation()
    return [
        _observation("kafka_beacons", lag=ui.lag, input_rate=ui.input_rate),
        _observation(
            "speed_metrics",
            last_batch=fresh.last_batch,
            behind_minutes=fresh.behind_minutes(now),
            last_batch_messages=fresh.messages,
            last_batch_seconds=fresh.batch_seconds,
            app_running=None if seen is None else ui.app_running,
            input_rate=ui.input_rate,
            processing_rate=ui.processing_rate,
            latency_ms=ui.latency_ms,
        ),
        _observation(
            "landing_zone", newest_hour=landed[-1].removeprefix("hour=") if landed else None
        ),
        freshness_evaluation(fresh, settings, now),
    ]


@dg.run_failure_sensor(
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Alerts on every failed run, a failed blocking asset check included.",
)
def alert_on_run_failure(context: dg.RunFailureSensorContext, alerts: AlertsResource):
    run = context.dagster_run
    partition = run.tags.get("dagster/partition", "")
    alerts.send(
        Alert(
            f"run of {run.job_name} failed" + (f" ({partition})" if partition else ""),
            context.failure_event.message or "the run failed",
            "critical",
            {"run_id": run.run_id, "job": run.job_name, "partition": partition or "-"},
        )
    )


# A failed blocking check fails its run, which `alert_on_run_failure` reports; these do not.
NON_BLOCKING_CHECKS = [spec.key for spec in METRICS_CHECKS if not spec.blocking]
TICK_CHECKS = list(speed_metrics_fresh.check_keys)  # evaluated every supervisor tick
CHECK_HISTORY = 100  # newest evaluations read per check and tick


def newly_failed(records: list, every: bool) -> list:
    """The failed evaluations worth an alert: each one when `every`, else only the first
    failure after a pass (the freshness check is evaluated every supervisor tick: a stale
    stream is reported once, not once a minute)."""
    found, before = [], None
    for record in sorted(records, key=lambda r: r.id):
        failed = record.status.value == "FAILED"
        if failed and (every or before != "FAILED"):
            found.append(record)
        before = record.status.value
    return found


@dg.sensor(
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Alerts once per tick on non-blocking asset checks that failed since the last.",
)
def alert_on_failed_check(context: dg.SensorEvaluationContext, alerts: AlertsResource):
    seen = int(context.cursor or 0)
    history = context.instance.event_log_storage.get_asset_check_execution_history
    failed = [
        record
        for key in (*NON_BLOCKING_CHECKS, *TICK_CHECKS)
        for record in newly_failed(history(key, limit=CHECK_HISTORY), key not in TICK_CHECKS)
        if record.id > seen
    ]
    if not failed:
        return dg.SkipReason(f"no failed check since record {seen}")
    failed.sort(key=lambda r: r.id)
    lines = []
    for record in failed:
        evaluation = record.event.dagster_event.event_specific_data if record.event else None
        note = (evaluation.description if evaluation else None) or "failed"
        partition = record.partition or _run_partition(context.instance, record.run_id)
        lines.append(f"{record.key.to_user_string()} [{partition}]: {note}")
    checks = sorted({r.key.name for r in failed})
    outcome = alerts.send(
        Alert(
            f"{len(failed)} asset check(s) failed: {', '.join(checks)}",
            "\n".join(lines),
            "warning",
            {"runs": ", ".join(sorted({r.run_id for r in failed}))},
        )
    )
    context.log.info(f"alerted on {len(failed)} failed check(s): {outcome}")
    context.update_cursor(str(failed[-1].id))
    return dg.SkipReason(f"alerted on {len(failed)} failed check(s)")


def _run_partition(instance: dg.DagsterInstance, run_id: str) -> str:
    """The partition of a run ('-' for none): check records of an asset's own checks omit it."""
    run = instance.get_run_by_id(run_id)
    return (run.tags.get("dagster/partition") if run else None) or "-"
