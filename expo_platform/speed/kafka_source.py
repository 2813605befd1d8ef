"""A Spark Structured Streaming source over Kafka, written with Spark's Python data source API.

Spark's own Kafka connector is a Maven artifact; where it is missing, this source reads the
same topic through confluent-kafka. `read_stream()` returns either one with a uniform schema:
`key string, value string, topic string, partition int, offset long, timestamp timestamp`;
`value` keeps the bytes as sent, valid UTF-8 or not.

Offsets are `{"<partition>": <next offset>, ...}` in ascending partition order, so the same
positions always serialise to the same JSON (Spark compares offsets as JSON strings).

Committing to ZooKeeper is the app's job, after its writes, inside `foreachBatch`:

    def write(batch, batch_id):
        batch.persist()
        ...  # the micro-batch's writes
        zk_offsets.commit(topic, end_offsets_of_batch(batch))
        batch.unpersist()

`commit()` of this source is called only when the next batch is planned, which is too late
(and too early for the sink), so it does not touch ZooKeeper.

The source's schema, offsets and options are in `kafka_options`; the reading of one offset
range into Arrow batches, on the executors, is in `kafka_ranges`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Mapping
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.datasource import (
    DataSource,
    DataSourceReader,
    DataSourceStreamReader,
)
from pyspark.sql.streaming.datasource import (
    ReadAllAvailable,
    ReadLimit,
    ReadMaxRows,
    SupportsTriggerAvailableNow,
)
from pyspark.sql.types import StructType

from expo_platform.errors import ExpoError
from expo_platform.logs import quiet_kafka_conf
from expo_platform.settings import Settings
from expo_platform.speed.kafka_options import (
    EARLIEST,
    LATEST,
    SCHEMA,
    SOURCE_NAME,
    Offsets,
    SourceOptions,
    builtin_kafka_options,
    expo_kafka_options,
    from_json_offsets,
    split_budget,
    to_json_offsets,
    uniform,
)
from expo_platform.speed.kafka_ranges import KafkaRange, read_range

log = logging.getLogger("expo_platform.speed.kafka_source")

METADATA_TIMEOUT = 15.0
# Ends the error of a query whose offsets the broker no longer has (`app` looks for it).
DATA_LOST = "set failOnDataLoss=false to read it from its start"
PROBE_QUIET_POLLS = 3  # empty polls of 0.5 s in a row that end an end-offset probe
PROBE_DEADLINE_S = 15.0


class ExpoKafkaDataSource(DataSource):
    """`spark.readStream.format("expo_kafka")`: Kafka through confluent-kafka."""

    @classmethod
    def name(cls) -> str:
        return SOURCE_NAME

    def schema(self) -> StructType:
        return SCHEMA

    def streamReader(self, schema: StructType) -> DataSourceStreamReader:
        return ExpoKafkaStreamReader(SourceOptions.parse(self.options))

    def reader(self, schema: StructType) -> DataSourceReader:
        return ExpoKafkaBatchReader(SourceOptions.parse(self.options), self.options.get("ranges"))


class ExpoKafkaBatchReader(DataSourceReader):
    """`spark.read.format("expo_kafka").option("ranges", '{"0": [start, end]}')`: the records
    [start, end) of each listed partition, as a batch DataFrame."""

    def __init__(self, options: SourceOptions, ranges: str | None) -> None:
        if not ranges:
            raise ExpoError(
                'a batch read of expo_kafka needs the option ranges {"p": [start, end]}'
            )
        try:
            bounds = {int(p): (int(lo), int(hi)) for p, (lo, hi) in json.loads(ranges).items()}
        except (ValueError, TypeError) as exc:
            raise ExpoError(f"invalid ranges {ranges!r}: {exc}") from None
        self.options = options
        self.bounds = bounds

    def partitions(self) -> list[KafkaRange]:
        conf, step = self.options.consumer_conf(), self.options.records_per_task
        return [
            KafkaRange(
                self.options.topic, p, lo, min(hi, lo + step), conf, self.options.poll_timeout
            )
            for p, (first, hi) in sorted(self.bounds.items())
            for lo in range(first, hi, step)
        ]

    def read(self, partition: KafkaRange) -> Iterator:
        return read_range(partition)


class ExpoKafkaStreamReader(DataSourceStreamReader, SupportsTriggerAvailableNow):
    """Plans micro-batches from the broker's offsets; lives in one Python process per query."""

    def __init__(self, options: SourceOptions) -> None:
        self.options = options
        self._admin = None
        self._probe_consumer = None
        self._target: Offsets | None = None  # availableNow: the ends fixed at the start
        self._last_latest: Offsets | None = None

    def __getstate__(self) -> dict:
        # Spark may pickle a reader for its tasks; broker clients cannot travel and are lazy.
        return {**self.__dict__, "_admin": None, "_probe_consumer": None}

    # -- offsets ---------------------------------------------------------------------------

    def initialOffset(self) -> dict:
        """Where a query without a checkpoint starts: ZooKeeper's offsets, else the option."""
        bounds = self._bounds()
        committed = self._zookeeper_offsets()
        starting = self.options.starting
        start = {}
        for p, (low, high) in bounds.items():
            if p in committed:
                start[p] = self._checked(p, committed[p], low, high)
            elif isinstance(starting, dict):
                wanted = starting.get(p, EARLIEST)
                start[p] = low if wanted == EARLIEST else high if wanted == LATEST else wanted
            else:
                start[p] = low if starting == "earliest" else high
        log.info(
            "initial offsets",
            extra={
                "topic": self.options.topic,
                "from_zookeeper": sorted(committed),
                "offsets": to_json_offsets(start),
            },
        )
        return to_json_offsets(start)

    def latestOffset(self, start: dict, limit: ReadLimit) -> dict:
        """The end of the next batch: the broker's end (or the availableNow target), limited."""
        begin = from_json_offsets(start)
        latest = dict(self._target) if self._target is not None else self._end_offsets()
        self._last_latest = dict(latest)
        for p in sorted(begin):
            if p not in latest:
                latest[p] = begin[p]  # partition vanished from the metadata: stay put
            elif latest[p] < begin[p]:
                self._data_lost(p, begin[p], latest[p])
                begin[p] = 0
        for p in latest:
            begin.setdefault(p, 0)  # a partition added after the start is read from its start
        if isinstance(limit, ReadMaxRows):
            end = split_budget(begin, latest, limit.max_rows)
        else:
            end = latest
        return to_json_offsets(end)

    def getDefaultReadLimit(self) -> ReadLimit:
        """maxOffsetsPerTrigger as Spark's admission-control limit."""
        limit = self.options.max_offsets_per_trigger
        return ReadMaxRows(limit) if limit else ReadAllAvailable()

    def reportLatestOffset(self) -> dict | None:
        """The broker's end offsets seen at the last planning, for the query's progress."""
        return None if self._last_latest is None else to_json_offsets(self._last_latest)

    def prepareForTriggerAvailableNow(self) -> None:
        """Fix the ends now: an availableNow run reads what exists at its start, then stops."""
        self._target = self._end_offsets()
        log.info("availableNow target", extra={"offsets": to_json_offsets(self._target)})

    def partitions(self, start: dict, end: dict) -> list[KafkaRange]:
        """One task per partition range, split into chunks of at most recordsPerTask."""
        begin, stop = from_json_offsets(start), from_json_offsets(end)
        ranges = []
        for p in sorted(stop):
            first = begin.get(p, 0)
            if stop[p] < first:  # data loss already reported by latestOffset
                first = 0
            for lo in range(first, stop[p], self.options.records_per_task):
                hi = min(stop[p], lo + self.options.records_per_task)
                ranges.append(
                    KafkaRange(
                        self.options.topic,
                        p,
                        lo,
                        hi,
                        self.options.consumer_conf(),
                        self.options.poll_timeout,
                    )
                )
        return ranges

    def read(self, partition: KafkaRange) -> Iterator:
        """Runs on executors: the records of one range as Arrow batches."""
        return read_range(partition)

    def commit(self, end: dict) -> None:
        """Nothing to do: the app commits its offsets to ZooKeeper after its own writes."""
        log.debug("batch planned past", extra={"offsets": end})

    def stop(self) -> None:
        """Close the metadata clients."""
        if self._probe_consumer is not None:
            self._probe_consumer.close()
            self._probe_consumer = None
        self._admin = None

    # -- broker and ZooKeeper --------------------------------------------------------------

    def _checked(self, partition: int, committed: int, low: int, high: int) -> int:
        """A committed offset the broker can serve; past its end means the data is gone."""
        if committed > high:
            self._data_lost(partition, committed, high)
            return low
        return max(committed, low)

    def _data_lost(self, partition: int, expected: int, found: int) -> None:
        message = (
            f"topic {self.options.topic} partition {partition}: the broker ends at offset "
            f"{found}, before the query's position {expected} (topic re-created or broker "
            "data lost, e.g. a restarted in-memory broker)"
        )
        if self.options.fail_on_data_loss:
            raise ExpoError(f"{message}; {DATA_LOST}")
        log.warning("data loss, reading the partition from its start", extra={"detail": message})

    def _admin_client(self):
        if self._admin is None:
            from confluent_kafka.admin import AdminClient

            conf = {
                "bootstrap.servers": self.options.bootstrap,
                **quiet_kafka_conf("source-admin", self.options.bootstrap),
                **self.options.client_conf,
            }
            self._admin = AdminClient(conf)
        return self._admin

    def _partition_ids(self) -> list[int]:
        from confluent_kafka import KafkaException

        try:
            # All topics: naming one makes Tansu create it (4 partitions) as a side effect.
            metadata = self._admin_client().list_topics(timeout=METADATA_TIMEOUT)
        except KafkaException as exc:
            raise ExpoError(f"Kafka at {self.options.bootstrap} is unreachable: {exc}") from None
        info = metadata.topics.get(self.options.topic)
        if info is None or info.error is not None:
            return []  # not created yet: no partitions, no data
        return sorted(info.partitions)

    def _list_offsets(self, partitions: list[int], spec_name: str) -> Offsets:
        from confluent_kafka import KafkaException, TopicPartition
        from confluent_kafka.admin import OffsetSpec

        if not partitions:
            return {}
        spec = OffsetSpec.earliest() if spec_name == "earliest" else OffsetSpec.latest()
        request = {TopicPartition(self.options.topic, p): spec for p in partitions}
        futures = self._admin_client().list_offsets(request, request_timeout=METADATA_TIMEOUT)
        try:
            offsets = {tp.partition: f.result().offset for tp, f in futures.items()}
        except KafkaException as exc:
            raise ExpoError(f"cannot list offsets of {self.options.topic}: {exc}") from None
        # A broker that stops answering mid-request times the request out without an error:
        # confluent-kafka then gives OFFSET_INVALID (-1001), which is no offset at all (read as
        # an end, it would look like data loss).
        unanswered = sorted(p for p, offset in offsets.items() if offset < 0)
        if unanswered:
            raise ExpoError(
                f"Kafka at {self.options.bootstrap} is unreachable: no {spec_name} offset of "
                f"{self.options.topic} partitions {unanswered} within {METADATA_TIMEOUT:.0f}s "
                f"(offset {offsets[unanswered[0]]})"
            )
        return offsets

    def _bounds(self) -> dict[int, tuple[int, int]]:
        partitions = self._partition_ids()
        low = self._list_offsets(partitions, "earliest")
        high = self._end_offsets(partitions)
        return {p: (low[p], high[p]) for p in partitions}

    def _end_offsets(self, partitions: list[int] | None = None) -> Offsets:
        partitions = self._partition_ids() if partitions is None else partitions
        ends = self._list_offsets(partitions, "latest")
        if self.options.probe_end_offsets:
            ends = self._probe_ends(ends)
        return dict(sorted(ends.items()))

    def _probe_ends(self, watermarks: Offsets) -> Offsets:
        """Tansu only: its end offset is the last batch's base + 1; fetch the rest of it."""
        from confluent_kafka import Consumer, TopicPartition

        if self._probe_consumer is None:
            self._probe_consumer = Consumer(self.options.consumer_conf())
        consumer = self._probe_consumer
        consumer.assign(
            [TopicPartition(self.options.topic, p, hw) for p, hw in watermarks.items() if hw > 0]
        )
        ends = dict(watermarks)
        deadline = time.monotonic() + PROBE_DEADLINE_S
        quiet = 0
        while time.monotonic() < deadline and quiet < PROBE_QUIET_POLLS:
            messages = consumer.consume(10_000, timeout=0.5)
            # A fetch in flight can leave one poll empty under load: only several in a row
            # say the partition has nothing more.
            quiet = 0 if messages else quiet + 1
            for m in messages:
                if m.error() is None:
                    ends[m.partition()] = max(ends[m.partition()], m.offset() + 1)
        consumer.unassign()
        return ends

    def _zookeeper_offsets(self) -> Offsets:
        if not self.options.zookeeper:
            return {}
        from expo_platform.speed.offsets import ZkOffsets

        with ZkOffsets(self.options.zookeeper, self.options.consumer) as zk:
            return zk.read(self.options.topic)


# -- helpers for the app ------------------------------------------------------------------


def register(spark: SparkSession) -> None:
    """Make `format("expo_kafka")` available in this session."""
    spark.dataSource.register(ExpoKafkaDataSource)


def topic_end_offsets(settings: Settings) -> Offsets:
    """The topic's end offsets per partition, as the stream's source sees them."""
    reader = ExpoKafkaStreamReader(SourceOptions.parse(expo_kafka_options(settings)))
    try:
        return reader._end_offsets()
    finally:
        reader.stop()


def end_offsets_of_batch(batch: DataFrame) -> dict[int, int]:
    """Per partition, the next offset after a micro-batch: max(offset) + 1 (what to commit)."""
    rows = batch.groupBy("partition").agg(F.max("offset").alias("last")).collect()
    return {int(r["partition"]): int(r["last"]) + 1 for r in sorted(rows)}


def read_stream(
    spark: SparkSession, settings: Settings, fmt: str = SOURCE_NAME, **options: Any
) -> DataFrame:
    """The beacons topic as a streaming DataFrame with the uniform schema, from either source.

    `options` go to the source as they are (e.g. startingOffsets, maxOffsetsPerTrigger).
    """
    if fmt == SOURCE_NAME:
        register(spark)
        reader = spark.readStream.format(SOURCE_NAME).options(
            **expo_kafka_options(settings, **options)
        )
        return uniform(reader.load())
    if fmt == "kafka":
        committed = _committed_offsets(settings)
        conf = builtin_kafka_options(settings, committed, **options)
        return uniform(spark.readStream.format("kafka").options(**conf).load())
    raise ExpoError(f"unknown stream format {fmt!r}: use {SOURCE_NAME} or kafka")


def read_ranges(
    spark: SparkSession, settings: Settings, ranges: Mapping[int, tuple[int, int]]
) -> DataFrame:
    """Records [start, end) of partitions of the beacons topic, with the uniform schema."""
    register(spark)
    spec = json.dumps({str(p): [lo, hi] for p, (lo, hi) in ranges.items() if hi > lo})
    options = expo_kafka_options(settings, ranges=spec)
    del options["zookeeper"], options["consumer"]
    return uniform(spark.read.format(SOURCE_NAME).options(**options).load())


def _committed_offsets(settings: Settings) -> dict[int, int]:
    from expo_platform.speed.offsets import ZkOffsets

    with ZkOffsets(settings.stream.zookeeper, settings.stream.offsets_consumer) as zk:
        return zk.read(settings.stream.kafka_topic)
