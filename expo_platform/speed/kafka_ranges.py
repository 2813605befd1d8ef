"""One Spark task of the `expo_kafka` source: the records [start, end) of one partition,
read with confluent-kafka on an executor and returned as pyarrow RecordBatches.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from pyspark.sql.datasource import InputPartition

from expo_platform.errors import ExpoError
from expo_platform.speed.kafka_options import COLUMNS, DEFAULT_POLL_TIMEOUT, SCHEMA

ROWS_PER_ARROW_BATCH = 10_000


@dataclass(frozen=True)
class KafkaRange(InputPartition):
    """One Spark task: records [start, end) of one partition, and how to reach the broker."""

    topic: str
    partition: int
    start: int
    end: int
    conf: dict[str, str] = field(default_factory=dict)
    poll_timeout: float = DEFAULT_POLL_TIMEOUT


def _arrow_schema():
    from pyspark.sql.pandas.types import to_arrow_schema

    # Spark checks a returned batch's schema for equality with exactly this conversion.
    return to_arrow_schema(SCHEMA, timezone="UTC")


def read_range(part: KafkaRange) -> Iterator:
    """Consume records [start, end) of one partition; yield pyarrow RecordBatches."""
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    schema = _arrow_schema()
    consumer = Consumer(part.conf)
    tp = TopicPartition(part.topic, part.partition, part.start)
    consumer.assign([tp])
    columns: dict[str, list] = {name: [] for name in COLUMNS}
    next_offset, last_progress, last_error = part.start, time.monotonic(), None
    try:
        while next_offset < part.end:
            messages = consumer.consume(min(ROWS_PER_ARROW_BATCH, part.end - next_offset), 1.0)
            if not messages:
                position = consumer.position([tp])[0].offset
                # Offsets without records (transaction markers, compaction) end a range too.
                if position >= part.end:
                    break
                if time.monotonic() - last_progress > part.poll_timeout:
                    raise ExpoError(
                        f"{part.topic}/{part.partition}: no records for {part.poll_timeout:.0f}s "
                        f"at offset {next_offset}, expected up to {part.end - 1} "
                        f"(last client error: {last_error})"
                    )
                continue
            last_progress = time.monotonic()
            for m in messages:
                error = m.error()
                if error is not None:
                    if error.fatal():
                        raise KafkaException(error)
                    # Transient (the client retries); the poll timeout bounds the wait.
                    last_error = error.str()
                    continue
                offset = m.offset()
                if offset >= part.end:
                    next_offset = part.end
                    break
                if offset < next_offset:
                    continue
                _append(columns, m)
                next_offset = offset + 1
            if len(columns["offset"]) >= ROWS_PER_ARROW_BATCH:
                yield _record_batch(columns, schema)
                columns = {name: [] for name in COLUMNS}
        if columns["offset"]:
            yield _record_batch(columns, schema)
    finally:
        consumer.close()


def _append(columns: dict[str, list], message) -> None:
    key, value = message.key(), message.value()
    kind, stamp = message.timestamp()
    columns["key"].append(None if key is None else key.decode("utf-8", "replace"))
    columns["value"].append(value)
    columns["topic"].append(message.topic())
    columns["partition"].append(message.partition())
    columns["offset"].append(message.offset())
    columns["timestamp"].append(stamp * 1000 if kind and stamp >= 0 else None)


def _record_batch(columns: dict[str, list], schema):
    import pyarrow as pa

    arrays = [pa.array(columns[f.name], type=f.type) for f in schema]
    return pa.RecordBatch.from_arrays(arrays, schema=schema)
