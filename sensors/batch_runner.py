"""`expo batch`: materialize a range of hours through Dagster, in-process, hour by hour.

Every run is recorded in the Dagster instance under DAGSTER_HOME, so the UI shows it.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable
from datetime import datetime

import dagster as dg

from expo_platform.core.hours import ONE_HOUR, hour_key, hour_label, hour_range, parse_hour
from expo_platform.errors import ExpoError
from sensors.schedules import day_completed_by

log = logging.getLogger(__name__)


def _check_range(hourly: dg.PartitionsDefinition, first: datetime, last: datetime) -> datetime:
    """Fail clearly on hours outside the partitions; return the newest partition's hour."""
    oldest = parse_hour(hourly.get_first_partition_key())
    newest_key = hourly.get_last_partition_key()
    newest = parse_hour(newest_key) if newest_key else oldest
    for hour in (first, last):
        if not oldest <= hour <= newest:
            raise ExpoError(
                f"hour {hour_label(hour)} is outside the hourly partitions "
                f"({hour_label(oldest)} .. {hour_label(newest)})"
            )
    if last < first:
        raise ExpoError(f"--from {hour_label(first)} is after --to {hour_label(last)}")
    return newest


def _one_line(message: str) -> str:
    """An error message folded onto one line, without the exception class prefix (Dagster's
    or the platform's own)."""
    text = " ".join(part.strip() for part in message.strip().splitlines() if part.strip())
    prefixed = text.startswith(("dagster.", "expo_platform.errors.")) and ": " in text
    return text.split(": ", 1)[1] if prefixed else text


def _platform_errors(cls: type = ExpoError) -> set[str]:
    """The class names of the platform's own errors: ExpoError and its subclasses."""
    return {cls.__name__}.union(*(_platform_errors(sub) for sub in cls.__subclasses__()))


def _step_error(error) -> str:
    """A step's error on one line: the platform's own error (an ExpoError) where the chain
    of causes holds one, since it says what to do; else Dagster's line and the first line
    of the root cause."""
    chain = [error]
    while chain[-1].cause is not None:
        chain.append(chain[-1].cause)
    ours = [e for e in chain if e.cls_name in _platform_errors()]
    if ours:
        return _one_line(ours[0].message)
    root = chain[-1].message.strip().splitlines()
    return _one_line(error.message) + (f" {root[0]}" if len(chain) > 1 and root else "")


def _failure(result: dg.ExecuteInProcessResult) -> str:
    """The first error message of a failed run, on one line."""
    for event in result.all_events:
        if event.is_step_failure and event.step_failure_data and event.step_failure_data.error:
            return _step_error(event.step_failure_data.error)
    for event in result.all_events:
        if event.is_failure and event.message:
            return _one_line(event.message)
    return "the run failed"


def _execute(job: dg.JobDefinition, key: str, label: str, instance: dg.DagsterInstance) -> float:
    started = time.monotonic()
    result = job.execute_in_process(
        partition_key=key,
        instance=instance,
        raise_on_error=False,
        # The runner prints one progress line per hour; the full event log is in the UI.
        run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
    )
    if not result.success:
        raise ExpoError(f"{job.name} of {label} failed (run {result.run_id}): {_failure(result)}")
    return time.monotonic() - started


def run_batch(
    defs: dg.Definitions,
    first: datetime,
    last: datetime,
    progress: Callable[[str], None] = print,
) -> dict[str, int]:
    """Ingest hours first..last+1 and compute the metrics of first..last, in dependency order.

    Metrics of an hour are final once the next hour is in, so the hour after `last` is
    ingested too when it exists; otherwise the metrics of `last` wait, and that is said.
    Every day whose last hour's metrics are done in the range is then analysed.
    """
    # Entering the instance makes its storage the current one for loading definitions too.
    # Resolving them warns that the sensors' `owners` parameter is beta: Dagster's own
    # business, not the user's, and it would break the one-line error of `expo batch`.
    with dg.DagsterInstance.get() as instance, warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.BetaWarning)
        hourly = defs.resolve_job_def("hourly_ingest").partitions_def
        newest = _check_range(hourly, first, last)
        return _run_hours(defs, instance, first, last, min(last + ONE_HOUR, newest), progress)


def _run_hours(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    first: datetime,
    last: datetime,
    ingest_last: datetime,
    progress: Callable[[str], None],
) -> dict[str, int]:
    ingest = defs.resolve_job_def("hourly_ingest")
    metrics = defs.resolve_job_def("hourly_metrics")
    analysis = defs.resolve_job_def("daily_analysis")
    hours = list(hour_range(first, ingest_last))
    done = {"ingested": 0, "metrics": 0, "days": 0}
    for step, hour in enumerate(hours, start=1):
        seconds = _execute(ingest, hour_key(hour), hour_label(hour), instance)
        done["ingested"] += 1
        line = f"[{step}/{len(hours)}] {hour_label(hour)} ingested in {seconds:.1f}s"
        previous = hour - ONE_HOUR
        if first <= previous <= last:
            seconds = _execute(metrics, hour_key(previous), hour_label(previous), instance)
            done["metrics"] += 1
            line += f"; metrics of {hour_label(previous)} in {seconds:.1f}s"
            day = day_completed_by(previous)
            if day is not None:
                seconds = _execute(analysis, day.isoformat(), str(day), instance)
                done["days"] += 1
                line += f"; day {day} analysed in {seconds:.1f}s"
        progress(line)
    if ingest_last == last:
        progress(
            f"metrics of {hour_label(last)} wait for hour {hour_label(last + ONE_HOUR)}, "
            "which has not ended yet"
        )
    return done
