"""Runs whose run worker died without a word (kill -9, the OOM killer, a machine's crash).

Dagster's default run launcher starts each run's worker as a process of this machine and
cannot check on it: a dead worker's run would stay STARTED for good, holding the `spark`
pool's only slot, so every later run would queue behind it. This sensor finds such runs by
the worker's pid (in the run's "Started process for run" event) and marks them failed, which
frees the slot and fires `alert_on_run_failure`. Retry them from the UI (Re-execute) or
through GraphQL (`launchRunReexecution`): every write is absolute, so a re-run of an hour
gives the store of a clean run.
"""

from __future__ import annotations

import dagster as dg

from expo_platform.ops.processes import pid_alive

WATCH_EVERY_S = 15


def worker_pid(instance: dg.DagsterInstance, run_id: str) -> int | None:
    """The pid the run's worker reported when it started, or None before it did."""
    records = instance.get_records_for_run(
        run_id, of_type=dg.DagsterEventType.ENGINE_EVENT, limit=50
    ).records
    for record in records:
        event = record.event_log_entry.dagster_event
        data = event.engine_event_data if event else None
        if data and "pid" in data.metadata:
            return int(data.metadata["pid"].value)
    return None


@dg.sensor(
    minimum_interval_seconds=WATCH_EVERY_S,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Fails the runs whose run worker process died, so their pool slot is freed "
    "and the failure is alerted; retry them with Re-execute.",
)
def dead_run_workers(context: dg.SensorEvaluationContext) -> dg.SkipReason:
    instance = context.instance
    if not isinstance(instance.run_launcher, dg.DefaultRunLauncher):
        return dg.SkipReason("runs are launched elsewhere: their launcher watches them")
    failed = []
    for run in instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED])):
        pid = worker_pid(instance, run.run_id)
        if pid is None or pid_alive(pid):
            continue
        instance.report_run_failed(
            run,
            f"the run worker (pid {pid}) ended without reporting the run's end: killed or "
            "crashed. Every write is absolute: re-execute the run to redo its hour",
        )
        context.log.warning(f"run {run.run_id} of {run.job_name}: worker pid {pid} is gone")
        failed.append(run.run_id)
    if failed:
        return dg.SkipReason(f"failed {len(failed)} run(s) whose worker died: {failed}")
    return dg.SkipReason("ok: every started run has a live worker")
