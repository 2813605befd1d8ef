"""One micro-batch of the speed layer, run by `foreachBatch` (see `app.run_stream`).

Everything a batch writes is keyed by the batch (`<epoch>-<batch id>`) or is an absolute
value, so a batch that is replayed after a crash rewrites the same files and points. Its
steps, each in a module of its own:

1. `parse`: every message is read from Kafka once and parsed and validated once, by the
   batch layer's `beacons.parse_beacons`; the result is cached for the steps below;
2. `land`: every raw message goes to the landing zone by event hour (the batch layer's
   input); a message without an event time goes to the stream quarantine with its reason;
3. `counted`: late beacons (behind the event-time watermark) and duplicates (an event_id
   already counted in its event hour) are told apart from the counted beacons, which are
   kept in the batch's own folder by event hour;
4. `sketches`: the visitors of the on-time beacons are merged into their hours' sketches;
5. `quality`: the quality counts per hour, added up in the batch's `Progress`;
6. `sessions` and `publish`: in the touched hours, the sessions the batch touched are
   sessionized again (`visits.build_sessions`, visits carried from the hour before) and
   the hours' metrics recomputed (`metrics.metrics_of_hour`), the batch layer's functions;
7. `rolling`: rolling 1-hour and 24-hour unique visitors, stamped with the event-time minute;
8. the progress is written, then the Kafka offsets are committed to ZooKeeper: only after
   every write of the batch has succeeded.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from expo_platform.core.hours import ONE_HOUR, hour_range, hour_start_ms
from expo_platform.core.visits import VISIT_GAP_MS
from expo_platform.lake import STREAM_SESSIONS
from expo_platform.serving.store import MetricStore
from expo_platform.settings import Settings
from expo_platform.speed import counted, land, parse, publish, quality, rolling, sessions, sketches
from expo_platform.speed.context import BatchContext
from expo_platform.speed.files import EVENT_HOUR, MINUTE_MS, Progress, StreamFiles
from expo_platform.speed.kafka_source import end_offsets_of_batch, read_ranges
from expo_platform.speed.lease import WriterLease
from expo_platform.speed.offsets import ZkOffsets
from expo_platform.speed.retry import retry
from expo_platform.speed.step_times import StepTimes

log = logging.getLogger("expo_platform.speed.micro_batch")

WATERMARK_QUANTILE = 0.99
AFTER_EVERY_BATCH = "9999"  # a key after every batch key


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

    def context(self, spark: SparkSession, key: str) -> BatchContext:
        return BatchContext(
            spark, self.settings, self.files, self.store, self.step, key, self.writes
        )

    def __call__(self, df: DataFrame, batch_id: int) -> None:
        key = f"{self.epoch:04d}-{batch_id:08d}"
        spark = df.sparkSession
        self.step = StepTimes(f"expo batch {key}", spark)
        parsed = parse.parse_messages(df).persist(StorageLevel.MEMORY_AND_DISK)
        try:
            with self.step("read"):  # Kafka is read, and each message parsed, here only
                offsets = end_offsets_of_batch(parsed)
            self.check_lease(spark)
            counts = self.run(spark, parsed, key, offsets)
        finally:
            parsed.unpersist()
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
        self, spark: SparkSession, parsed: DataFrame, key: str, ends: dict[int, int]
    ) -> dict[str, int]:
        """All writes of the batch of `parsed` messages (`parse.parse_messages`); returns its
        counts. `ends` holds the next offset per partition after the batch."""
        ctx = self.context(spark, key)
        step = self.step
        previous = self.files.progress_before(key)
        beacons = parse.beacons(parsed)
        if ctx.writes:
            with step("land"):
                land.land(ctx, beacons, ends, self.lease)
        with step("quarantine"):
            land.quarantine(ctx, beacons)
        with step("classify"):
            batch = counted.classify(ctx, beacons, previous.watermark(self.watermark_ms))
        with step("counted_write"):
            counted.write(ctx, batch.counted)
        with step("sketches"):
            sketches.update(ctx, batch.on_time, batch.hours)
        with step("quality"):
            batch_counts = quality.batch_counts(batch.classified, counted.rows_by_hour(ctx))
        with step("watermark"):
            # The watermark follows each batch's 99th percentile of event time, not its
            # maximum: one beacon from a clock hours ahead must not make a batch of on-time
            # ones late.
            newest, earliest = batch.on_time.agg(
                F.percentile("ts", WATERMARK_QUANTILE).cast("long"), F.min("ts")
            ).first()
        known = [v for v in (previous.max_ts, newest) if v is not None]
        message_count = sum(c["beacons_total"] for c in batch_counts.values())
        progress = Progress(
            key=key,
            messages=message_count,
            max_ts=max(known) if known else None,
            quality=quality.add(previous.quality, batch_counts),
            no_event_time=previous.no_event_time + batch_counts.pop("", {}).get("beacons_total", 0),
        )
        with step("quality"):
            quality.write(ctx, progress, set(batch_counts))
        if batch.hours:
            # Every on-time beacon's session, duplicates too: a beacon that an earlier epoch
            # counted may be missing from that epoch's visits.
            touched = batch.on_time.select(EVENT_HOUR, "session_id").distinct()
            first, newest_hour = batch.hours[0], self.files.hours_with_beacons(key)[-1]
            with step("sessions"):
                sessions.sessionize(ctx, list(hour_range(first, newest_hour)), touched)
            if ctx.writes:
                with step("metrics"):
                    # The hour before `first` too, if the batch may continue its visits.
                    since = first - ONE_HOUR if continues_visits_before(first, earliest) else first
                    publish.publish(ctx, list(hour_range(since, newest_hour)))
        if progress.max_ts is not None and ctx.writes:
            with step("rolling"):
                rolling.write_rolling(ctx, progress.max_ts, key)
        with step("expire"):
            self.files.expire(progress)
        with step("produced_time"):
            progress.produced_ms = parse.produced_quantiles(parsed)
        progress.steps = dict(step.seconds)  # up to here: commit comes after the write
        progress.batch_seconds = round(step.elapsed(), 3)
        progress.done_ms = int(time.time() * 1000)
        self.files.write_progress(progress)
        return {
            "messages": message_count,
            "no_event_time": progress.no_event_time - previous.no_event_time,
            "counted": sum(c["beacons_valid"] for c in batch_counts.values()),
            "late": sum(c["beacons_late"] for c in batch_counts.values()),
            "hours": len(batch.hours),
        }

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
            messages = parse.beacons(parse.parse_messages(read_ranges(spark, self.settings, gap)))
            land.land(
                self.context(spark, key),
                messages,
                {p: hi for p, (_, hi) in gap.items()},
                self.lease,
            )
        self.writes = True  # the writes below are this region's now
        ctx = self.context(spark, AFTER_EVERY_BATCH)
        progress = self.files.progress_before(AFTER_EVERY_BATCH)
        quality.write(ctx, progress, set(progress.quality))
        hours = STREAM_SESSIONS.hours_in(self.files.sessions_dir)
        publish.publish(ctx, hours)
        if progress.max_ts is not None:
            rolling.write_rolling(ctx, progress.max_ts, AFTER_EVERY_BATCH)
        log.info(
            "took over the writes in %.1fs: landed %s, published %d hours",
            time.monotonic() - started,
            {p: f"{lo}..{hi}" for p, (lo, hi) in gap.items()} or "nothing",
            len(hours),
        )


def continues_visits_before(first: datetime, earliest_ts: int) -> bool:
    """Whether a batch whose earliest on-time beacon is `earliest_ts`, in hour `first`, may
    change the metrics of the hour before: an hour's bounces depend on which of its visits go
    on in the next hour, and only a beacon within VISIT_GAP_MS of the hour's start can
    continue a visit of the hour before (its last beacon is earlier than the hour, and a
    beacon more than VISIT_GAP_MS after it starts a new visit)."""
    return earliest_ts - hour_start_ms(first) < VISIT_GAP_MS
