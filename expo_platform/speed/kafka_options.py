"""The `expo_kafka` source's record schema, its offsets in Spark's JSON form, its options,
and the options of Spark's built-in `kafka` format; `uniform` gives either source's rows the
same columns.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import (
    BinaryType,
    IntegerType,
    LongType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

from expo_platform.errors import ExpoError
from expo_platform.settings import Settings

SOURCE_NAME = "expo_kafka"
SCHEMA = StructType(
    [
        StructField("key", StringType()),
        # Bytes as they came: the parse rejects a message that is not UTF-8 (a decode here
        # would replace its bad bytes, and the beacon would count with altered ids).
        StructField("value", BinaryType()),
        StructField("topic", StringType()),
        StructField("partition", IntegerType()),
        StructField("offset", LongType()),
        StructField("timestamp", TimestampType()),
    ]
)
COLUMNS = tuple(SCHEMA.fieldNames())
EARLIEST, LATEST = -2, -1  # Spark's kafka source uses the same markers in startingOffsets JSON
DEFAULT_RECORDS_PER_TASK = 1_000_000
DEFAULT_POLL_TIMEOUT = 60.0

Offsets = dict[int, int]


def to_json_offsets(offsets: Mapping[int, int]) -> dict[str, int]:
    """Spark's form of offsets: string partition keys in ascending partition order."""
    return {str(p): int(offsets[p]) for p in sorted(offsets)}


def from_json_offsets(offsets: Mapping[str, Any] | None) -> Offsets:
    """Offsets as Spark hands them back (string keys) to `{partition: offset}`."""
    return {int(p): int(o) for p, o in (offsets or {}).items()}


def parse_starting_offsets(text: str, topic: str) -> str | Offsets:
    """Parse `earliest`, `latest`, or JSON `{"0": 5}` / `{"<topic>": {"0": 5}}` (-2, -1 too)."""
    value = (text or "latest").strip()
    if value.lower() in ("earliest", "latest"):
        return value.lower()
    try:
        data = json.loads(value)
        if isinstance(data, dict) and topic in data and isinstance(data[topic], dict):
            data = data[topic]
        return from_json_offsets(data)
    except (ValueError, TypeError, AttributeError):
        raise ExpoError(
            f"startingOffsets {text!r}: use earliest, latest or JSON like "
            '{"0": 42, "1": -2} (-2 earliest, -1 latest)'
        ) from None


def split_budget(start: Offsets, latest: Offsets, max_rows: int) -> Offsets:
    """Ends that admit at most `max_rows` records, shared by partition in proportion to lag."""
    lag = {p: max(0, latest[p] - start.get(p, 0)) for p in latest}
    total = sum(lag.values())
    if total <= max_rows:
        return dict(latest)
    share = {p: lag[p] * max_rows // total for p in lag}
    spare = max_rows - sum(share.values())
    for p in sorted(lag):  # the rounding remainder goes to the lowest partitions
        extra = min(spare, lag[p] - share[p])
        share[p] += extra
        spare -= extra
    return {p: start.get(p, 0) + share[p] for p in latest}


@dataclass(frozen=True)
class SourceOptions:
    """The options of the `expo_kafka` source, parsed and checked."""

    bootstrap: str
    topic: str
    starting: str | Offsets = "latest"
    max_offsets_per_trigger: int | None = None
    zookeeper: str | None = None
    consumer: str | None = None
    fail_on_data_loss: bool = True
    poll_timeout: float = DEFAULT_POLL_TIMEOUT
    records_per_task: int = DEFAULT_RECORDS_PER_TASK
    probe_end_offsets: bool = False
    client_conf: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, options: Mapping[str, str]) -> SourceOptions:
        """Check the options; raise ExpoError naming the first bad one."""
        opts = {k.lower(): v for k, v in options.items()}
        bootstrap = opts.get("bootstrap") or opts.get("kafka.bootstrap.servers")
        topic = opts.get("topic") or opts.get("subscribe")
        if not bootstrap or not topic:
            raise ExpoError("the expo_kafka source needs the options bootstrap and topic")
        if bool(opts.get("zookeeper")) != bool(opts.get("consumer")):
            raise ExpoError("set both zookeeper and consumer, or neither")
        limit = opts.get("maxoffsetspertrigger")
        end_mode = opts.get("endoffsets", "watermark").lower()
        if end_mode not in ("watermark", "probe"):
            raise ExpoError(f"endOffsets must be watermark or probe, not {end_mode!r}")
        try:
            parsed = cls(
                bootstrap=bootstrap,
                topic=topic,
                starting=parse_starting_offsets(opts.get("startingoffsets", "latest"), topic),
                max_offsets_per_trigger=int(limit) if limit else None,
                zookeeper=opts.get("zookeeper") or None,
                consumer=opts.get("consumer") or None,
                fail_on_data_loss=opts.get("failondataloss", "true").lower() != "false",
                poll_timeout=float(opts.get("polltimeoutseconds", DEFAULT_POLL_TIMEOUT)),
                records_per_task=int(opts.get("recordspertask", DEFAULT_RECORDS_PER_TASK)),
                probe_end_offsets=end_mode == "probe",
                client_conf={
                    k[len("kafka.") :]: v
                    for k, v in opts.items()
                    if k.startswith("kafka.") and k != "kafka.bootstrap.servers"
                },
            )
        except ValueError as exc:
            raise ExpoError(f"invalid expo_kafka option: {exc}") from None
        if parsed.max_offsets_per_trigger is not None and parsed.max_offsets_per_trigger < 1:
            raise ExpoError("maxOffsetsPerTrigger must be at least 1")
        if parsed.records_per_task < 1:
            raise ExpoError("recordsPerTask must be at least 1")
        return parsed

    def consumer_conf(self) -> dict[str, str]:
        """librdkafka settings of the reading consumers (assign() only: no group, no commits)."""
        return {
            "bootstrap.servers": self.bootstrap,
            "group.id": f"expo-spark-source-{self.topic}",
            "enable.auto.commit": "false",
            "enable.auto.offset.store": "false",
            "auto.offset.reset": "earliest",
            "enable.partition.eof": "false",
            "log_level": 0,  # no librdkafka line per reconnect (see logs.quiet_kafka_conf)
            **self.client_conf,
        }


def uniform(df: DataFrame) -> DataFrame:
    """The uniform column set, from either source's columns."""
    return df.select(
        F.col("key").cast("string").alias("key"),
        F.col("value").cast("string").alias("value"),
        F.col("topic").cast("string").alias("topic"),
        F.col("partition").cast("int").alias("partition"),
        F.col("offset").cast("long").alias("offset"),
        F.col("timestamp").cast("timestamp").alias("timestamp"),
    )


def expo_kafka_options(settings: Settings, **options: Any) -> dict[str, str]:
    """Options of the `expo_kafka` source from the settings, plus overrides (as strings)."""
    base = {
        "bootstrap": settings.stream.kafka_bootstrap,
        "topic": settings.stream.kafka_topic,
        "zookeeper": settings.stream.zookeeper,
        "consumer": settings.stream.offsets_consumer,
        "startingOffsets": "earliest",
    }
    base.update({k: str(v) for k, v in options.items() if v is not None})
    return base


def builtin_kafka_options(
    settings: Settings, committed: Mapping[int, int] | None = None, **options: Any
) -> dict[str, str]:
    """Options of Spark's built-in `kafka` format; ZooKeeper's offsets become startingOffsets.

    startingOffsets only applies when the query has no checkpoint, as with `expo_kafka`.
    Partitions without a committed offset start at earliest (-2).
    """
    conf = {
        "kafka.bootstrap.servers": settings.stream.kafka_bootstrap,
        "subscribe": settings.stream.kafka_topic,
        "startingOffsets": "earliest",
        "failOnDataLoss": "true",
    }
    if committed:
        conf["startingOffsets"] = json.dumps(
            {settings.stream.kafka_topic: to_json_offsets(committed)}
        )
    conf.update({k: str(v) for k, v in options.items() if v is not None})
    return conf
