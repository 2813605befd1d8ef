"""The speed layer: Kafka -> Spark Structured Streaming -> metric store, layer speed.

Every micro-batch runs `MicroBatch.run` through `foreachBatch`. Everything it writes is keyed
by the batch (`<epoch>-<batch id>`) or is an absolute value, so a batch that is replayed
after a crash rewrites the same files and points:

1. every raw message goes to the landing zone by event hour (the batch layer's input);
   a message without an event time goes to the stream quarantine with its reason;
2. the batch layer's validation (`beacons.parse_beacons`) decides what counts; a valid
   beacon more than the watermark behind the newest event time seen before the batch is
   late (counted as `beacons_late`, not in the metrics); an `event_id` that an earlier
   batch saw is a duplicate: the query keeps the `event_id`s of the last 12 hours of
   arrivals in its RocksDB state store (`dropDuplicatesWithinWatermark`, see
   `with_first_sightings`), and within a batch the first by (ts, raw) counts, as in the batch
   layer;
3. the counted beacons are kept by hour, and their visitors merged into each hour's
   HyperLogLog sketches (per experiment key); in the touched hours, the sessions the batch
   touched are sessionized again with `visits.build_sessions` (open visits carried from
   the hour before; every other session keeps its rows) and the hours' metrics recomputed
   with `metrics.hourly_metrics`, the same functions as the batch layer; `visitors_24h`
   merges the day's hourly sketches (METRICS.md allows 2%; the error is about 0.4%)
   instead of reading 24 hours of sessions;
4. rolling 1-hour (exact) and 24-hour (sketched) unique visitors are stamped with the
   batch's event-time minute; they read the beacons of at most three hours;
5. the progress (newest event time, quality counts, seconds per step) is written, then the
   Kafka offsets are committed to ZooKeeper: only after every write of the batch has
   succeeded.

Counted beacons, sketches and sessions older than RETENTION_HOURS are deleted: no state
outlives the 24-hour lookback of `visitors_24h`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from expo_platform import lake
from expo_platform.core import beacons as bc
from expo_platform.core.hours import (
    HOUR_MS,
    ONE_HOUR,
    event_hour_col,
    hour_iso,
    hour_key,
    hour_of_ms,
    hour_range,
    hour_start_ms,
    parse_hour,
)
from expo_platform.core.metrics import (
    EXPERIMENT_METRICS,
    KEY,
    at_least_exact,
    estimated_visitors,
    exact_visitors,
    merge_sketches,
    metrics_of_hour,
    sketches_of_hours,
    visitor_sketches,
)
from expo_platform.core.visits import build_sessions
from expo_platform.errors import ExpoError
from expo_platform.lake import LANDING_COLUMN, STREAM_BEACONS, STREAM_SESSIONS, STREAM_SKETCHES
from expo_platform.serving.store import MetricStore, Point, quality_points, wide_points
from expo_platform.settings import JVM_OPTIONS, Settings
from expo_platform.spark import object_hash_aggregate
from expo_platform.speed.kafka_source import end_offsets_of_batch, read_ranges, read_stream
from expo_platform.speed.lease import WriterLease
from expo_platform.speed.offsets import ZkOffsets

log = logging.getLogger("expo_platform.speed.stream")

T = TypeVar("T")
RETENTION_HOURS = 26  # visitors_24h looks back 23 hours; the rolling window 24
PROGRESS_KEPT = 20
WATERMARK_QUANTILE = 0.99
MINUTE_MS = 60_000
ROLLING_1H, ROLLING_24H = "visitors_rolling_1h", "visitors_rolling_24h"
ROLLING = (ROLLING_1H, ROLLING_24H)
# The stream rejects what the batch layer does but `wrong_partition` (it has no landing hour).
STREAM_QUALITY = bc.quality_metrics(
    [r for r in bc.REJECT_REASONS if r != "wrong_partition"], late=True
)
# A message's event hour (`event_hour_col`), the partition column of the stream's tables.
EVENT_HOUR = STREAM_BEACONS.partition_column
JOB_DESCRIPTION = "spark.job.description"  # what the Spark UI shows for a job
DEDUP_STATE_HOURS = 12  # how long the query's state remembers an event_id after it arrived
FIRST_SIGHTING = "first_sighting"  # the column that tells the state's rows from messages
PRODUCED_QUANTILES = (0.0, 0.01, 0.5)  # of Kafka timestamps, for freshness (see Progress)
LEASE_CHECK_S = 2.0  # between micro-batches: hand the writer lease over, or take it
RETRY_LIMIT_S = 900.0  # give up on the store or ZooKeeper after 15 minutes of failures


def retry(what: str, action: Callable[[], T], limit_s: float = RETRY_LIMIT_S) -> T:
    """Run `action` until it succeeds, backing off up to 30 s; writes are idempotent."""
    started, delay = time.monotonic(), 1.0
    while True:
        try:
            return action()
        except ExpoError as exc:
            if time.monotonic() - started > limit_s:
                raise
            log.warning("%s failed, retrying in %.0fs: %s", what, delay, exc)
            time.sleep(delay)
            delay = min(delay * 2, 30.0)


@dataclass
class Progress:
    """What the stream knows after a batch: newest event time and quality counts per hour."""

    key: str = ""  # "<epoch>-<batch>" of the batch that wrote it
    max_ts: int | None = None  # newest event time: the highest batch 99th percentile so far
    quality: dict[str, dict[str, int]] = field(default_factory=dict)  # hour key -> counts
    no_event_time: int = 0  # messages quarantined without an hour
    messages: int = 0  # messages of this batch (blank ones aside)
    batch_seconds: float = 0.0  # from the batch's start (its Kafka read) to its progress write
    done_ms: int = 0  # when its metrics were in the store (epoch ms)
    # Kafka timestamps (produce time) of its messages at quantiles 0, 0.01 and 0.5: the
    # freshness of its metrics at percentiles 100, 99 and 50 is done_ms minus these.
    produced_ms: list[int] = field(default_factory=list)
    steps: dict[str, float] = field(default_factory=dict)  # seconds per step (StepTimes)

    def watermark(self, delay_ms: int) -> int | None:
        """Valid beacons with ts below this are late."""
        return None if self.max_ts is None else self.max_ts - delay_ms


class StepTimes:
    """Wall-clock seconds per named step of a micro-batch, summed when a step repeats.

    With a Spark session, the step also names the Spark jobs it runs ("<label>: <step>" in
    the Spark UI's job descriptions).
    """

    def __init__(self, label: str = "", spark: SparkSession | None = None) -> None:
        self.seconds: dict[str, float] = {}
        self.label = label
        self.spark = spark
        self.started = time.monotonic()

    def elapsed(self) -> float:
        """Seconds since the timer was made: the batch's start."""
        return time.monotonic() - self.started

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        context = self.spark.sparkContext if self.spark is not None else None
        before = None
        if context is not None:
            before = context.getLocalProperty(JOB_DESCRIPTION)
            context.setJobDescription(f"{self.label}: {name}")
        started = time.perf_counter()
        try:
            yield
        finally:
            spent = time.perf_counter() - started
            self.seconds[name] = round(self.seconds.get(name, 0.0) + spent, 3)
            if context is not None:
                context.setLocalProperty(JOB_DESCRIPTION, before)  # type: ignore[arg-type]

    def __str__(self) -> str:
        return " ".join(f"{name}={s:.1f}s" for name, s in self.seconds.items())


class StreamFiles:
    """Where the speed layer keeps its files, all under `<lake>/stream`."""

    def __init__(self, settings: Settings) -> None:
        self.root = settings.stream_dir
        self.landing = settings.lake.landing_dir
        self.checkpoint = self.root / "checkpoint"
        self.progress_dir = self.root / "progress"
        self.beacons_dir = STREAM_BEACONS.root(settings)
        self.sessions_dir = STREAM_SESSIONS.root(settings)
        self.sketches_dir = STREAM_SKETCHES.root(settings)
        self.quarantine_dir = self.root / "quarantine"
        self.tmp_dir = self.root / "_tmp"

    def epoch(self) -> int:
        """The epoch of this checkpoint: a new checkpoint starts a new one (batch ids restart)."""
        marker = self.checkpoint / "expo_epoch"
        if marker.exists():
            return int(marker.read_text())
        epochs = [int(p.name.split("-")[0]) for p in self.progress_dir.glob("*.json")]
        epoch = max(epochs, default=-1) + 1
        self.checkpoint.mkdir(parents=True, exist_ok=True)
        marker.write_text(str(epoch))
        return epoch

    def progress_before(self, key: str) -> Progress:
        """The progress of the newest batch before `key` (empty for the first)."""
        keys = sorted(p.stem for p in self.progress_dir.glob("*.json") if p.stem < key)
        if not keys:
            return Progress()
        data = json.loads((self.progress_dir / f"{keys[-1]}.json").read_text())
        return Progress(**data)

    def write_progress(self, progress: Progress) -> None:
        lake.write_atomically(
            self.progress_dir / f"{progress.key}.json", json.dumps(asdict(progress))
        )

    def batch_folders(self, upto: str) -> list[Path]:
        """Counted-beacon folders of the finished batches up to `upto` (inclusive)."""
        return [
            d
            for d in sorted(self.beacons_dir.glob("batch=*"))
            if d.name.removeprefix("batch=") <= upto and (d / "_SUCCESS").exists()
        ]

    def beacon_paths(self, hour: datetime, upto: str) -> list[Path]:
        """Counted-beacon folders of an hour written by batches up to `upto` (inclusive)."""
        paths = [STREAM_BEACONS.partition_in(d, hour) for d in self.batch_folders(upto)]
        return [p for p in paths if p.is_dir()]

    def session_path(self, hour: datetime) -> Path:
        return STREAM_SESSIONS.partition_in(self.sessions_dir, hour)

    def sketch_path(self, hour: datetime) -> Path:
        return STREAM_SKETCHES.partition_in(self.sketches_dir, hour)

    def hours_with_beacons(self, upto: str) -> list[datetime]:
        """Hours that counted beacons of batches up to `upto` fall in."""
        return sorted({h for d in self.batch_folders(upto) for h in STREAM_BEACONS.hours_in(d)})


def _parsed(messages: DataFrame) -> DataFrame:
    """Kafka messages, validated like the batch layer's lines, with their event hour."""
    return (
        messages.select(_one_line("value"), "partition", "offset")
        .transform(bc.drop_blank_lines)
        .transform(bc.parse_beacons)
        .withColumn(EVENT_HOUR, F.when(F.col("ts") > 0, event_hour_col("ts")))
    )


def _one_line(value: str) -> F.Column:
    """A message as one landing-zone line: line breaks become spaces."""
    return F.regexp_replace(value, "[\\r\\n]+", " ").alias(value)


class MicroBatch:
    """Process one micro-batch of Kafka messages; see the module docstring for the steps."""

    def __init__(
        self,
        settings: Settings,
        store: MetricStore,
        commit: Callable,
        lease: WriterLease | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.commit_offsets = commit
        self.files = StreamFiles(settings)
        self.epoch = self.files.epoch()
        self.watermark_ms = settings.stream.watermark_minutes * MINUTE_MS
        # Without a lease the app is the only writer; with one, only while it holds it.
        self.lease = lease
        self.writes = lease is None
        self.step = StepTimes()  # of the batch in flight

    def __call__(self, df: DataFrame, batch_id: int) -> None:
        key = f"{self.epoch:04d}-{batch_id:08d}"
        self.step = StepTimes(f"expo batch {key}", df.sparkSession)
        batch = df.persist(StorageLevel.MEMORY_AND_DISK)
        try:
            # Run the stateful part exactly once per batch, even for a batch without data:
            # the state store's version for this batch id is written by this action.
            with self.step("read_dedup"):
                batch.count()
            messages = batch.where(F.col(FIRST_SIGHTING).isNull()).drop(FIRST_SIGHTING)
            firsts = batch.where(F.col(FIRST_SIGHTING).isNotNull()).select(
                F.col(FIRST_SIGHTING).alias("event_id")
            )
            with self.step("offsets"):
                offsets = end_offsets_of_batch(messages)
            self.check_lease(messages.sparkSession)
            counts = self.run(messages.sparkSession, messages, key, firsts, offsets)
        finally:
            batch.unpersist()
        if offsets:
            with self.step("commit"):
                retry("committing offsets to ZooKeeper", lambda: self.commit_offsets(offsets))
        log.info(
            "batch %s done in %.1fs%s: %s; offsets %s; steps %s",
            key,
            self.step.elapsed(),
            "" if self.writes else " (standby)",
            " ".join(f"{k}={v}" for k, v in counts.items()),
            offsets,
            self.step,
        )

    def check_lease(self, spark: SparkSession) -> None:
        """Before a micro-batch, and between batches: hand the lease over when another running
        region is preferred; take it when it is free, and then publish (`_take_over`)."""
        if self.lease is None:
            return
        if self.writes and self.lease.should_hand_over():
            self.lease.release()
            self.writes = False
            log.info("writes handed over to region %s", self.lease.preferred())
            return
        holds = self.lease.holds() or self.lease.try_acquire()
        if holds and not self.writes:
            self._take_over(spark)  # if it fails, the next check tries again
            log.info("region %s writes from now on", self.settings.stream.region)
        elif self.writes and not holds:
            log.warning("region %s lost the writer lease: standby", self.settings.stream.region)
        self.writes = holds

    def run(
        self,
        spark: SparkSession,
        messages: DataFrame,
        key: str,
        firsts: DataFrame,
        ends: dict[int, int] | None = None,
    ) -> dict[str, int]:
        """All writes of the batch; returns its counts.

        `firsts` holds the `event_id`s this batch saw first (none earlier within 12 hours);
        `ends` the next offset per partition after the batch (for the landed offsets).
        """
        previous = self.files.progress_before(key)
        parsed = _parsed(messages).persist(StorageLevel.MEMORY_AND_DISK)
        try:
            progress, counts = self._run(spark, parsed, key, previous, firsts, ends or {})
        finally:
            parsed.unpersist()
        with self.step("produced_time"):
            produced = messages.agg(
                F.percentile_approx(F.unix_millis(F.col("timestamp")), list(PRODUCED_QUANTILES))
            ).first()[0]
        progress.produced_ms = [int(v) for v in produced or []]
        progress.steps = dict(self.step.seconds)  # up to here: commit comes after the write
        progress.batch_seconds = round(self.step.elapsed(), 3)
        progress.done_ms = int(time.time() * 1000)
        self.files.write_progress(progress)
        return counts

    def _run(
        self,
        spark: SparkSession,
        parsed: DataFrame,
        key: str,
        previous: Progress,
        firsts: DataFrame,
        ends: dict[int, int],
    ) -> tuple[Progress, dict[str, int]]:
        if self.writes:
            with self.step("land"):
                self._land(parsed, key, ends)
        with self.step("quarantine"):
            self._quarantine(parsed, key)
        watermark = previous.watermark(self.watermark_ms)
        valid = F.col("reason").isNull()
        late = valid & (F.col("ts") < F.lit(watermark)) if watermark is not None else F.lit(False)
        classified = parsed.withColumn(
            "reason",
            F.when(late, F.lit(bc.LATE)).otherwise(F.col("reason")),
        )
        on_time = classified.where(F.col("reason").isNull())
        with self.step("hours"):
            hours = [parse_hour(r[0]) for r in on_time.select(EVENT_HOUR).distinct().collect()]
            earlier = self._earlier_epochs_event_ids(spark, hours)
        checked = (
            bc.mark_duplicates(on_time)
            .join(firsts.withColumn("_first", F.lit(True)), "event_id", "left")
            .join(earlier.withColumn("_earlier", F.lit(True)), "event_id", "left")
        )
        seen_before = F.col("_first").isNull() | F.col("_earlier").isNotNull()
        checked = checked.withColumn(
            "reason",
            F.when(seen_before & F.col("reason").isNull(), F.lit(bc.DUPLICATE)).otherwise(
                F.col("reason")
            ),
        ).drop("_first", "_earlier")
        counted = checked.where(F.col("reason").isNull())
        # The batch's folder is replaced as a whole (static overwrite writes its _SUCCESS).
        folder = self.files.beacons_dir / f"batch={key}"
        with self.step("counted_write"):
            writer = counted.select(*bc.BEACON_COLUMNS, EVENT_HOUR).write
            writer.mode("overwrite").option("partitionOverwriteMode", "static").partitionBy(
                EVENT_HOUR
            ).parquet(str(folder))
        with self.step("sketches"):
            self._update_sketches(spark, key, on_time, hours)
        with self.step("quality"):
            batch_counts = self._quality(classified, folder)
        with self.step("watermark"):
            # The watermark follows each batch's 99th percentile of event time, not its
            # maximum: one beacon from a clock hours ahead must not make a batch of on-time
            # ones late.
            newest = on_time.agg(F.percentile("ts", WATERMARK_QUANTILE).cast("long")).first()[0]
        known = [v for v in (previous.max_ts, newest) if v is not None]
        message_count = sum(c["beacons_total"] for c in batch_counts.values())
        progress = Progress(
            key=key,
            messages=message_count,
            max_ts=max(known) if known else None,
            quality=self._add_quality(previous.quality, batch_counts),
            no_event_time=previous.no_event_time + batch_counts.pop("", {}).get("beacons_total", 0),
        )
        with self.step("quality"):
            self._write_quality(progress, set(batch_counts))
        if hours:
            # Every on-time beacon's session, duplicates too: a beacon that an earlier epoch
            # counted (`_earlier_epochs_event_ids`) may be missing from that epoch's visits.
            touched = on_time.select(EVENT_HOUR, "session_id").distinct()
            self._recompute(spark, min(hours), key, touched)
        if progress.max_ts is not None and self.writes:
            with self.step("rolling"):
                self._rolling(spark, progress.max_ts, key)
        with self.step("expire"):
            self._expire(progress)
        return progress, {
            "messages": message_count,
            "no_event_time": progress.no_event_time - previous.no_event_time,
            "counted": sum(c["beacons_valid"] for c in batch_counts.values()),
            "late": sum(c["beacons_late"] for c in batch_counts.values()),
            "hours": len(hours),
        }

    def _land(self, parsed: DataFrame, key: str, ends: dict[int, int]) -> None:
        """Raw messages into the landing zone by event hour.

        With a lease, only offsets no writer has landed yet; then the landed offsets move on.
        """
        prefix = f"{self.settings.stream.region}-{key}" if self.lease else key
        for old in self.files.landing.glob(f"hour=*/stream-{prefix}-*.json"):
            old.unlink()  # a replayed batch writes its files again
        tmp = self.files.tmp_dir / f"landing-{key}"
        shutil.rmtree(tmp, ignore_errors=True)
        dated = parsed.where(F.col(EVENT_HOUR).isNotNull())
        landed = self.lease.landed(self.settings.stream.kafka_topic) if self.lease else {}
        for partition, offset in landed.items():
            dated = dated.where((F.col("partition") != partition) | (F.col("offset") >= offset))
        dated.select(F.col(EVENT_HOUR).alias(LANDING_COLUMN), "raw").write.partitionBy(
            LANDING_COLUMN
        ).text(str(tmp))
        for folder in sorted(tmp.glob(f"{LANDING_COLUMN}=*")):
            target = self.files.landing / folder.name
            target.mkdir(parents=True, exist_ok=True)
            for i, part in enumerate(sorted(folder.glob("part-*"))):
                if part.stat().st_size:
                    os.replace(part, target / f"stream-{prefix}-{i:03d}.json")
        shutil.rmtree(tmp, ignore_errors=True)
        if self.lease is not None and ends:
            self.lease.commit_landed(self.settings.stream.kafka_topic, ends)

    def _quarantine(self, parsed: DataFrame, key: str) -> None:
        """Messages without an event time, with their reason, in the stream's own files."""
        parsed.where(F.col(EVENT_HOUR).isNull()).select(
            "raw",
            F.coalesce("reason", F.lit("bad_field")).alias("reason"),
            F.coalesce("detail", F.lit("ts")).alias("detail"),
            "partition",
            "offset",
        ).write.mode("overwrite").parquet(str(self.files.quarantine_dir / f"batch={key}"))

    def _take_over(self, spark: SparkSession) -> None:
        """This region has just taken the lease: land the messages the last writer had not
        landed (read back from Kafka), then write every result this region's state holds."""
        started = time.monotonic()
        assert self.lease is not None
        topic = self.settings.stream.kafka_topic
        # Read in the lease's session (it lives as long as the app); they were committed in
        # the app's offsets session: `fresh` sees its last commit.
        mine = ZkOffsets(self.lease.session, self.settings.stream.offsets_consumer).read(
            topic, fresh=True
        )
        landed = self.lease.landed(topic)
        gap = {p: (landed.get(p, 0), end) for p, end in mine.items() if end > landed.get(p, 0)}
        if gap:
            key = "gap-" + "_".join(f"{p}.{lo}.{hi}" for p, (lo, hi) in sorted(gap.items()))
            parsed = _parsed(read_ranges(spark, self.settings, gap))
            self._land(parsed, key, {p: hi for p, (_, hi) in gap.items()})
        self.writes = True  # the writes below are this region's now
        newest = "9999"  # after every batch key
        progress = self.files.progress_before(newest)
        self._write_quality(progress, set(progress.quality))
        hours = STREAM_SESSIONS.hours_in(self.files.sessions_dir)
        self._publish(spark, hours)
        if progress.max_ts is not None:
            self._rolling(spark, progress.max_ts, newest)
        log.info(
            "took over the writes in %.1fs: landed %s, published %d hours",
            time.monotonic() - started,
            {p: f"{lo}..{hi}" for p, (lo, hi) in gap.items()} or "nothing",
            len(hours),
        )

    def _earlier_epochs_event_ids(self, spark: SparkSession, hours: list[datetime]) -> DataFrame:
        """event_ids counted in these hours under an earlier checkpoint (epoch).

        A new checkpoint starts with an empty state store; the counted beacons that earlier
        epochs kept (26 hours) stand in for the state it lost. Normally there are none.
        """
        before = f"{self.epoch:04d}-"
        paths = [p for h in hours for p in self.files.beacon_paths(h, before)]
        return STREAM_BEACONS.read(spark, paths).select("event_id").distinct()

    @staticmethod
    def _quality(classified: DataFrame, counted_folder: Path) -> dict[str, dict[str, int]]:
        """Per hour key ("" for no event time): counts of this batch by metric.

        Counted beacons are the rows of the batch's folder (from the Parquet footers, so the
        de-duplication is not computed twice); the on-time beacons not counted are duplicates.
        """
        by_hour: dict[str, dict[str | None, int]] = {}
        reasons = classified.groupBy(F.coalesce(EVENT_HOUR, F.lit("")).alias("h"), "reason").count()
        for r in reasons.collect():
            by_hour.setdefault(r["h"], {})[r["reason"]] = r["count"]
        counted = lake.parquet_rows_by_partition(counted_folder)
        for hour, by_reason in by_hour.items():
            on_time = by_reason.pop(None, 0)  # valid and not late: counted or duplicate
            by_reason[None] = counted.get(hour, 0)
            by_reason[bc.DUPLICATE] = on_time - counted.get(hour, 0)
        return {h: bc.quality_counts(r, STREAM_QUALITY) for h, r in by_hour.items()}

    @staticmethod
    def _add_quality(before: dict, batch: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
        totals = {h: dict(c) for h, c in before.items()}
        for h, counts in batch.items():
            if h:
                merged = Counter(totals.get(h, {}))
                merged.update(counts)
                totals[h] = dict(merged)
        return totals

    def _write_quality(self, progress: Progress, hours: set[str]) -> None:
        points = [
            point
            for h in sorted(hours - {""})
            for point in quality_points(
                progress.quality[h], STREAM_QUALITY, hour_iso(parse_hour(h)), "speed"
            )
        ]
        if points and self.writes:
            hour_list = sorted({p.hour for p in points})
            retry(
                "writing quality points",
                lambda: self.store.replace(
                    points, layer="speed", hours=hour_list, metrics=STREAM_QUALITY
                ),
            )

    def _sessions(self, spark: SparkSession, hours: list[datetime]) -> DataFrame:
        paths = [p for h in hours if (p := self.files.session_path(h)).is_dir()]
        return STREAM_SESSIONS.read(spark, paths)

    def _recompute(
        self, spark: SparkSession, first: datetime, key: str, touched: DataFrame
    ) -> None:
        """Sessionize from `first` to the newest hour again, then rewrite their metrics."""
        newest = self.files.hours_with_beacons(key)[-1]
        with self.step("sessions"):
            self._sessionize(spark, hour_range(first, newest), key, touched)
        # An hour's bounces depend on the next hour: the hour before `first` changes too.
        if self.writes:
            with self.step("metrics"):
                self._publish(spark, hour_range(first - ONE_HOUR, newest))

    def _sessionize(
        self, spark: SparkSession, hours: list[datetime], key: str, touched: DataFrame
    ) -> None:
        """Sessions rows of these hours, in order, after batch `key` counted its beacons.

        `touched` holds (EVENT_HOUR, session_id) of the batch's on-time beacons. Only
        those sessions are sessionized again: a session's rows in hour H follow from its
        beacons in H and its rows in H - 1, so they change only if the batch has a beacon of
        it in H or an earlier hour. Every other session keeps its rows. The result equals
        sessionizing the whole hour, at the cost of a scan of the hour's beacons instead of a
        sort of them all. An hour without a sessions folder is sessionized whole.
        """
        for hour in hours:
            paths = self.files.beacon_paths(hour, key)
            target = self.files.session_path(hour)
            if not paths:
                shutil.rmtree(target, ignore_errors=True)
                continue
            beacons = STREAM_BEACONS.read(spark, paths)
            carried = self._sessions(spark, [hour - ONE_HOUR])
            if target.is_dir():
                sessions = F.broadcast(
                    touched.where(F.col(EVENT_HOUR) <= hour_key(hour))
                    .select("session_id")
                    .distinct()
                )
                rows = build_sessions(
                    beacons.join(sessions, "session_id", "left_semi"),
                    carried.join(sessions, "session_id", "left_semi"),
                    hour_start_ms(hour),
                ).unionByName(
                    self._sessions(spark, [hour]).join(sessions, "session_id", "left_anti")
                )
            else:
                rows = build_sessions(beacons, carried, hour_start_ms(hour))
            self._replace_sessions(rows, target, key)

    def _replace_sessions(self, rows: DataFrame, target: Path, key: str) -> None:
        """Write `rows` as the sessions folder `target` (see `_move_in`)."""
        tmp = self.files.tmp_dir / f"sessions-{key}"
        rows.write.mode("overwrite").parquet(str(tmp))
        self._move_in(tmp, target)

    def _move_in(self, new: Path, target: Path) -> None:
        """Replace folder `target` by folder `new`; `target` is never left half deleted.

        The old folder is moved aside in one rename before the new one moves in: a crash in
        between leaves no folder, and the replayed batch builds that hour's sessions or
        sketches from all its beacons.
        """
        aside = self.files.tmp_dir / "replaced"  # one batch at a time replaces folders
        shutil.rmtree(aside, ignore_errors=True)
        if target.is_dir():
            os.replace(target, aside)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(new, target)
        shutil.rmtree(aside, ignore_errors=True)

    def _update_sketches(
        self, spark: SparkSession, key: str, on_time: DataFrame, hours: list[datetime]
    ) -> None:
        """Merge the visitors of the batch's on-time beacons into their hours' sketches.

        Duplicates too: merging is idempotent, and a beacon an earlier epoch counted may be
        missing from the sketches (a crash between its counted write and its sketches, then a
        lost checkpoint). A replayed batch leaves the sketches as they were. An hour with
        counted beacons but no sketches folder (a crash mid-replace, a lake from before
        sketches) is sketched from all its counted beacons.
        """
        missing = {
            h for h in self.files.hours_with_beacons(key) if not self.files.sketch_path(h).is_dir()
        }
        written = sorted(set(hours) | missing)
        if not written:
            return
        kept = sketches_of_hours(
            written,
            lambda hour: hour not in missing,
            lambda hours: self._by_hour(hours, lambda hour: self._sketches(spark, [hour])),
            lambda hours: self._by_hour(
                hours, lambda hour: STREAM_BEACONS.read(spark, self.files.beacon_paths(hour, key))
            ),
            EVENT_HOUR,
        )
        merged = merge_sketches(
            lake.union_all([visitor_sketches(on_time, EVENT_HOUR), kept]), EVENT_HOUR
        )
        tmp = self.files.tmp_dir / f"sketches-{key}"
        with object_hash_aggregate(spark):
            merged.write.mode("overwrite").partitionBy(EVENT_HOUR).parquet(str(tmp))
        for hour in written:
            new = STREAM_SKETCHES.partition_in(tmp, hour)
            if not new.is_dir():  # no beacon of the hour is in an experiment: no sketches
                new.mkdir(parents=True)
            self._move_in(new, self.files.sketch_path(hour))
        shutil.rmtree(tmp, ignore_errors=True)

    @staticmethod
    def _by_hour(hours: list[datetime], rows_of: Callable[[datetime], DataFrame]) -> DataFrame:
        """The rows of each hour, with the hour in column EVENT_HOUR."""
        return lake.union_all(
            [rows_of(hour).withColumn(EVENT_HOUR, F.lit(hour_key(hour))) for hour in hours]
        )

    def _sketches(self, spark: SparkSession, hours: list[datetime]) -> DataFrame:
        """The visitor sketches of these hours (those that have any), one row per key and hour."""
        paths = [p for h in hours if (p := self.files.sketch_path(h)).is_dir()]
        return STREAM_SKETCHES.read(spark, paths)

    def _publish(self, spark: SparkSession, hours: list[datetime]) -> None:
        """Write the experiment metrics of these hours from the stream's sessions."""
        for hour in hours:
            if self.files.session_path(hour).is_dir():
                with object_hash_aggregate(spark):
                    wide = metrics_of_hour(
                        lambda hours: self._sessions(spark, hours),
                        lambda hours: self._sketches(spark, hours),
                        hour,
                    ).collect()
                points = wide_points(wide, EXPERIMENT_METRICS, hour_iso(hour), "speed")
                retry(
                    f"writing speed metrics of {hour_iso(hour)}",
                    lambda points=points, hour=hour: self.store.replace(
                        points, layer="speed", hours=[hour_iso(hour)], metrics=EXPERIMENT_METRICS
                    ),
                )

    def _rolling(self, spark: SparkSession, max_ts: int, key: str) -> None:
        """Unique visitors of the last hour and day, stamped with the event-time minute.

        The window [end - 24h, end) ends at the minute after the newest event time. Its first
        and last hours, and the hour before the last (for the last 60 minutes), are read as
        beacons; the full hours between them come from their sketches.
        """
        end = (max_ts // MINUTE_MS + 1) * MINUTE_MS
        window = list(hour_range(hour_of_ms(end - 24 * HOUR_MS), hour_of_ms(end - 1)))
        edges = {window[0], hour_of_ms(end - HOUR_MS), window[-1]}
        paths = [p for hour in sorted(edges) for p in self.files.beacon_paths(hour, key)]
        beacons = STREAM_BEACONS.read(spark, paths).where(
            (F.col("ts") >= end - 24 * HOUR_MS) & (F.col("ts") < end)
        )
        middle = self._sketches(spark, [h for h in window if h not in edges])
        day = estimated_visitors(lake.union_all([visitor_sketches(beacons), middle]), ROLLING_24H)
        last_hour = exact_visitors(beacons.where(F.col("ts") >= end - HOUR_MS), ROLLING_1H)
        hour_count = F.coalesce(ROLLING_1H, F.lit(0))
        # The day's visitors include the last hour's: an estimate below that count is raised.
        with object_hash_aggregate(spark):
            rows = (
                day.join(last_hour, list(KEY), "left")
                .select(
                    *KEY,
                    hour_count.alias(ROLLING_1H),
                    at_least_exact(ROLLING_24H, hour_count).alias(ROLLING_24H),
                )
                .collect()
            )
        if not rows:
            return
        stamp = datetime.fromtimestamp((end - MINUTE_MS) / 1000, UTC).strftime("%Y-%m-%dT%H:%M:00Z")
        points = [
            Point(
                name, r["experiment"], r["variant"], r["population"], stamp, "speed", float(r[name])
            )
            for r in rows
            for name in ROLLING
        ]
        retry("writing rolling visitors", lambda: self.store.upsert(points))

    def _expire(self, progress: Progress) -> None:
        """Delete counted beacons, sketches and sessions older than the retention."""
        if progress.max_ts is None:
            return
        cutoff = hour_key(
            datetime.fromtimestamp(progress.max_ts / 1000, UTC) - timedelta(hours=RETENTION_HOURS)
        )
        for folder in [
            *(
                p
                for d in self.files.beacons_dir.glob("batch=*")
                for p in STREAM_BEACONS.partitions_in(d)
            ),
            *STREAM_SESSIONS.partitions_in(self.files.sessions_dir),
            *STREAM_SKETCHES.partitions_in(self.files.sketches_dir),
        ]:
            if lake.Table.partition_value(folder) < cutoff:
                shutil.rmtree(folder, ignore_errors=True)
        progress.quality = {h: c for h, c in progress.quality.items() if h >= cutoff}
        # A replay needs only the progress before its own batch: keep the last few.
        for old in sorted(self.files.progress_dir.glob("*.json"))[:-PROGRESS_KEPT]:
            old.unlink(missing_ok=True)


def with_first_sightings(messages: DataFrame) -> DataFrame:
    """The messages, plus a row (`first_sighting` = event_id) per valid beacon's event_id
    not seen in the 12 hours of arrivals before: de-duplication in the RocksDB state store.

    Both branches read the same source, so they see the same offsets in every micro-batch.
    The watermark is on arrival time (the Kafka timestamp), so no beacon is ever dropped for
    being late here: event-time lateness is decided, counted and landed by `MicroBatch`.
    """
    arrived = F.coalesce(F.col("timestamp"), F.current_timestamp()).alias("arrived")
    firsts = (
        messages.select(_one_line("value"), arrived)
        .transform(bc.drop_blank_lines)
        .transform(bc.parse_beacons)
        .where(F.col("reason").isNull())
        .select("event_id", "arrived")
        .withWatermark("arrived", f"{DEDUP_STATE_HOURS} hours")
        .dropDuplicatesWithinWatermark(["event_id"])
        .select(F.col("event_id").alias(FIRST_SIGHTING))
    )
    return messages.withColumn(FIRST_SIGHTING, F.lit(None).cast("string")).unionByName(
        firsts, allowMissingColumns=True
    )


STREAM_SQL_CONF = {
    "spark.sql.streaming.metricsEnabled": "true",
    "spark.sql.streaming.stateStore.providerClass": (
        "org.apache.spark.sql.execution.streaming.state.RocksDBStateStoreProvider"
    ),
    # The dedup state drops what the watermark passed during the next batch with data; a
    # batch without data would only cost a pass over every step.
    "spark.sql.streaming.noDataMicroBatches.enabled": "false",
}


def stream_spark_config(settings: Settings) -> dict[str, str]:
    """The Spark settings of the streaming app: no Hive (its Derby metastore is the batch
    layer's, and admits one process), RocksDB state, metrics for the supervisor."""
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
    options: dict[str, Any] = {
        "startingOffsets": settings.stream.starting_offsets,
    }
    if settings.stream.source == "expo_kafka":
        options["endOffsets"] = settings.stream.kafka_end_offsets
    if settings.stream.max_offsets:
        options["maxOffsetsPerTrigger"] = settings.stream.max_offsets
    source = with_first_sightings(read_stream(spark, settings, settings.stream.source, **options))
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
            zk: ZkOffsets | None = ZkOffsets(
                settings.stream.zookeeper, settings.stream.offsets_consumer
            )

            def commit(offsets: dict[int, int]) -> None:
                nonlocal zk
                if zk is None:
                    zk = ZkOffsets(settings.stream.zookeeper, settings.stream.offsets_consumer)
                try:
                    zk.commit(settings.stream.kafka_topic, offsets)
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

            writer = (
                source.writeStream.queryName("expo_speed")
                .foreachBatch(on_batch)
                .option("checkpointLocation", str(files.checkpoint))
            )
            writer = (
                writer.trigger(availableNow=True)
                if until_idle
                else writer.trigger(processingTime=f"{settings.stream.trigger_seconds} seconds")
            )
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
                        (lambda: sink.check_lease(spark)) if lease is not None else None,
                    )
                    if stop.is_set():
                        if error is not None and STOP_REQUESTED not in error:
                            log.warning("the query failed while stopping: %s", _gist(error))
                        report.stopped_by = "signal"
                        break
                    if error is None:
                        break
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


def _restartable(error: str) -> bool:
    """A failure a restart may cure: the platform's own error (an unreachable broker,
    ZooKeeper or store), except data lost from Kafka, which must not be skipped silently."""
    return "expo_platform.errors." in error and "failOnDataLoss" not in error


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
