"""The speed layer's app: a Spark Structured Streaming query over Kafka whose every
micro-batch is a `MicroBatch` (`foreachBatch`), run until idle, stopped, or failed for good.

A stop lets the micro-batch in flight finish its writes. A query that fails with one of the
platform's own errors (Kafka, ZooKeeper or the store unreachable) starts again from its
checkpoint with back-off. With a region set, a `WriterLease` in ZooKeeper decides which of
the regions' apps writes.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from pyspark.sql import DataFrame, SparkSession

from expo_platform.errors import ExpoError
from expo_platform.serving.store import MetricStore
from expo_platform.settings import JVM_OPTIONS, Settings
from expo_platform.speed.files import StreamFiles
from expo_platform.speed.kafka_source import DATA_LOST, read_stream
from expo_platform.speed.lease import WriterLease
from expo_platform.speed.micro_batch import MicroBatch
from expo_platform.speed.offsets import ZkOffsets
from expo_platform.speed.retry import RETRY_LIMIT_S

log = logging.getLogger("expo_platform.speed.app")

LEASE_CHECK_S = 2.0  # between micro-batches: hand the writer lease over, or take it


STREAM_SQL_CONF = {
    "spark.sql.streaming.metricsEnabled": "true",
    # The query keeps no state (`counted` de-duplicates against the counted beacons): a
    # batch without data would only cost a pass over every step.
    "spark.sql.streaming.noDataMicroBatches.enabled": "false",
}


def stream_spark_config(settings: Settings) -> dict[str, str]:
    """The Spark settings of the streaming app: no Hive (its Derby metastore is the batch
    layer's, and admits one process), metrics for the supervisor."""
    conf = settings.spark_config()
    conf.update(
        {
            "spark.app.name": "expo-stream",
            "spark.sql.catalogImplementation": "in-memory",
            "spark.ui.enabled": "true",
            "spark.ui.port": str(settings.stream.ui_port),
            "spark.metrics.namespace": "expo",
            **STREAM_SQL_CONF,
        }
    )
    conf["spark.driver.extraJavaOptions"] = JVM_OPTIONS  # not the batch layer's Derby home
    conf.update(settings.spark.conf)
    return conf


def start_spark(settings: Settings) -> SparkSession:
    """A Spark session for the streaming app."""
    from expo_platform.spark import python_environment, quiet

    python_environment()
    builder = SparkSession.builder
    for k, v in stream_spark_config(settings).items():
        builder = builder.config(k, v)
    return quiet(builder.getOrCreate())


@dataclass
class StreamReport:
    """How a run of the streaming app ended."""

    batches: int = 0
    stopped_by: str = ""


def run_stream(
    settings: Settings,
    *,
    until_idle: bool = False,
    spark: SparkSession | None = None,
    stop: threading.Event | None = None,
    progress: Callable[[str], None] = print,
) -> StreamReport:
    """Run the speed layer until idle, until `stop` is set, or until SIGTERM/SIGINT.

    A stop lets the micro-batch in flight finish its writes. A query that fails with one of
    the platform's own errors (Kafka or ZooKeeper unreachable) starts again from its
    checkpoint, backing off like `retry`, until RETRY_LIMIT_S pass without a finished batch.
    """
    spark = spark or start_spark(settings)
    for name, value in STREAM_SQL_CONF.items():  # also on a session the caller made
        spark.conf.set(name, value)
    stop = stop or threading.Event()
    files = StreamFiles(settings)
    source = stream_source(spark, settings)
    report = StreamReport()
    handlers = _install_signal_handlers(stop)
    lease = None
    try:
        if settings.stream.region:
            lease = WriterLease(
                settings.stream.zookeeper,
                settings.stream.consumer,
                settings.stream.region,
                settings.stream.writer_lease_seconds,
            )
        with MetricStore(settings.lake.metric_store) as store:
            zk: ZkOffsets | None = None

            def offsets() -> ZkOffsets:
                """The ZooKeeper client of the offsets, a new one after `commit` dropped it."""
                nonlocal zk
                if zk is None:
                    zk = ZkOffsets(settings.stream.zookeeper, settings.stream.offsets_consumer)
                return zk

            offsets()  # connect now: an unreachable ZooKeeper fails the start

            def commit(offsets_of_batch: dict[int, int]) -> None:
                nonlocal zk
                try:
                    offsets().commit(settings.stream.kafka_topic, offsets_of_batch)
                except ExpoError:
                    # Once its bounded connection retries run out (a ZooKeeper outage of 15 s
                    # does it), kazoo never reconnects: the next attempt starts a new client.
                    zk.close()
                    zk = None
                    raise

            sink = MicroBatch(settings, store, commit, lease)
            writing = threading.Lock()  # held while a micro-batch writes
            finished: list[int] = []  # ids of the micro-batches the current query finished

            def on_batch(df: DataFrame, batch_id: int) -> None:
                with writing:
                    if stop.is_set():
                        # Nothing written yet; Spark logged the batch's offsets, so the next
                        # run replays it whole.
                        raise _StopRequested(STOP_REQUESTED)
                    sink(df, batch_id)
                    report.batches += 1
                    finished.append(batch_id)

            def make_writer() -> Any:
                writer = (
                    source.writeStream.queryName("expo_speed")
                    .foreachBatch(on_batch)
                    .option("checkpointLocation", str(files.checkpoint))
                )
                return (
                    writer.trigger(availableNow=True)
                    if until_idle
                    else writer.trigger(processingTime=f"{settings.stream.trigger_seconds} seconds")
                )

            writer = make_writer()
            failing_since: float | None = None
            delay = 1.0
            query = None
            try:
                while True:
                    done_before = report.batches
                    finished.clear()
                    query = writer.start()
                    if failing_since is None and not done_before:
                        progress(
                            f"stream {settings.stream.kafka_topic}@"
                            f"{settings.stream.kafka_bootstrap} -> "
                            f"{settings.lake.metric_store} (epoch {sink.epoch}, "
                            + (f"region {settings.stream.region}, " if lease else "")
                            + f"Spark UI {spark.sparkContext.uiWebUrl})"
                        )
                    error = _await_query(
                        query,
                        stop,
                        writing,
                        finished,
                        partial(sink.check_lease, spark) if lease is not None else None,
                    )
                    if stop.is_set():
                        if error is not None and STOP_REQUESTED not in error:
                            log.warning("the query failed while stopping: %s", _gist(error))
                        report.stopped_by = "signal"
                        break
                    if error is None:
                        break
                    if DATA_LOST in error and settings.stream.on_broker_reset == "new-epoch":
                        new_epoch(files, offsets(), settings.stream.kafka_topic, _gist(error))
                        sink = MicroBatch(settings, store, commit, lease)
                        writer = make_writer()
                        continue
                    if report.batches > done_before:
                        failing_since, delay = None, 1.0
                    now = time.monotonic()
                    failing_since = now if failing_since is None else failing_since
                    if not _restartable(error) or now - failing_since > RETRY_LIMIT_S:
                        raise ExpoError(f"the streaming query failed: {_gist(error)}")
                    log.warning(
                        "the query failed, restarting it from its checkpoint in %.0fs: %s",
                        delay,
                        _gist(error),
                    )
                    if stop.wait(delay):
                        report.stopped_by = "signal"
                        break
                    delay = min(delay * 2, 30.0)
            finally:
                if query is not None and query.isActive:
                    query.stop()
                if zk is not None:
                    zk.close()
    finally:
        if lease is not None:
            lease.close()
        _restore_signal_handlers(handlers)
    report.stopped_by = report.stopped_by or ("idle" if until_idle else "stopped")
    progress(f"stream stopped ({report.stopped_by}) after {report.batches} micro-batches")
    return report


def stream_source(spark: SparkSession, settings: Settings) -> DataFrame:
    """The query's input: the topic's messages, read by one source (each micro-batch reads
    Kafka once; `MicroBatch` parses what it read once)."""
    options: dict[str, Any] = {
        "startingOffsets": settings.stream.starting_offsets,
    }
    if settings.stream.source == "expo_kafka":
        options["endOffsets"] = settings.stream.kafka_end_offsets
    if settings.stream.max_offsets:
        options["maxOffsetsPerTrigger"] = settings.stream.max_offsets
    return read_stream(spark, settings, settings.stream.source, **options)


STOP_REQUESTED = "stop requested before the micro-batch started"


class _StopRequested(Exception):
    """A micro-batch that began after a stop was requested refuses to run."""


def _await_query(
    query: Any,
    stop: threading.Event,
    writing: threading.Lock,
    finished: list[int],
    between: Callable[[], None] | None = None,
) -> str | None:
    """Wait until the query ends or a stop is requested; return the query's error, if any.

    Every LEASE_CHECK_S while no micro-batch runs, `between` runs (the writer-lease check).
    """
    from pyspark.errors import StreamingQueryException

    next_check = time.monotonic() + LEASE_CHECK_S
    while query.isActive:
        if stop.is_set():
            _stop_between_batches(query, writing, finished)
            break
        try:
            query.awaitTermination(0.5)
        except StreamingQueryException:
            break
        if between is not None and time.monotonic() >= next_check:
            next_check = time.monotonic() + LEASE_CHECK_S
            if writing.acquire(blocking=False):
                try:
                    between()
                except ExpoError as exc:
                    log.warning("writer lease check failed, trying again: %s", exc)
                finally:
                    writing.release()
    error = query.exception()
    return None if error is None else str(error)


def _stop_between_batches(
    query: Any, writing: threading.Lock, finished: list[int], timeout: float = 30.0
) -> None:
    """Stop the query when no micro-batch is writing: stopping cancels a batch's jobs."""
    with writing:  # the micro-batch in flight finishes its writes
        pass
    # Let Spark log the finished batch as committed too, or the next run would replay it.
    deadline = time.monotonic() + timeout
    while finished and query.isActive and time.monotonic() < deadline:
        last = query.lastProgress
        if last is not None and last.batchId >= finished[-1]:
            break
        time.sleep(0.05)
    query.stop()


def new_epoch(files: StreamFiles, zk: ZkOffsets, topic: str, reason: str) -> None:
    """The broker lost the data behind the stream's offsets (EXPO_STREAM_ON_BROKER_RESET=
    new-epoch): put the checkpoint aside and set the ZooKeeper offsets to 0, so the next
    query reads the broker from its start in a new epoch. The landed beacons, the stream's counted
    beacons and progress, and the store stay: a message sent again is a duplicate of its
    event_id and counts once."""
    old = files.epoch()
    aside = files.retire_checkpoint()
    # Offset 0 of every partition: the new query starts at the broker's start (its first
    # offset, whatever EXPO_STREAM_STARTING_OFFSETS says).
    zk.commit(topic, dict.fromkeys(zk.read(topic), 0))
    log.warning(
        "the broker lost the stream's data: new epoch from the broker's start",
        extra={
            "reason": reason,
            "old_epoch": old,
            "new_epoch": files.epoch(),
            "checkpoint_set_aside": str(aside),
        },
    )


def _restartable(error: str) -> bool:
    """A failure a restart may cure: the platform's own error (an unreachable broker,
    ZooKeeper or store), except data lost from Kafka, which must not be skipped silently."""
    return "expo_platform.errors." in error and DATA_LOST not in error


def _gist(error: str) -> str:
    """One line of a query failure: the platform's own error message when there is one."""
    lines = [line.strip() for line in error.splitlines() if line.strip()]
    ours = [line for line in lines if line.startswith("expo_platform.errors.")]
    return (ours or lines or ["(no message)"])[-1 if ours else 0]


def _install_signal_handlers(stop: threading.Event) -> dict:
    if threading.current_thread() is not threading.main_thread():
        return {}
    old = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        old[sig] = signal.signal(sig, lambda *_: stop.set())
    return old


def _restore_signal_handlers(old: dict) -> None:
    for sig, handler in old.items():
        signal.signal(sig, handler)
