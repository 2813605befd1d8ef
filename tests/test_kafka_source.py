"""The producer and the Spark `expo_kafka` source against a real broker and ZooKeeper."""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition
from pyspark.sql import DataFrame
from pyspark.sql.streaming.datasource import ReadAllAvailable
from pyspark.sql.types import StringType

from expo_platform.devtools.generator import GeneratorConfig, iter_lines
from expo_platform.devtools.producer import (
    EXACT_END_OFFSETS,
    produce_lines,
    produce_live,
    produce_realtime,
)
from expo_platform.errors import ExpoError
from expo_platform.ops.zookeeper_broker import ensure_topic
from expo_platform.speed import kafka_source
from expo_platform.speed.kafka_options import (
    SCHEMA,
    SOURCE_NAME,
    SourceOptions,
    builtin_kafka_options,
    from_json_offsets,
    parse_starting_offsets,
    split_budget,
)
from expo_platform.speed.kafka_source import (
    ExpoKafkaStreamReader,
    end_offsets_of_batch,
    read_stream,
    register,
)
from expo_platform.speed.offsets import ZkOffsets
from tests.fixtures_services import unique_topic

PARTITIONS = 3
SMALL = GeneratorConfig(start=datetime(2026, 3, 2, tzinfo=UTC), hours=2, visitors=60)


def beacons(n: int, start: int = 0) -> list[str]:
    """n distinct beacon lines over 7 visitors."""
    return [
        json.dumps({"event_id": f"e-{i}", "visitor_id": f"v-{i % 7}", "ts": 1_000 + i})
        for i in range(start, start + n)
    ]


def consume_all(bootstrap: str, topic: str, partitions: int) -> list:
    """Every record of a topic, read with a plain consumer (no Spark), until 1 s of quiet."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "check"})
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    records = []
    try:
        while batch := consume_some(consumer):
            records += [m for m in batch if m.error() is None]
    finally:
        consumer.close()
    return records


def consume_some(consumer: Consumer) -> list:
    """What arrives within a second (consume() alone waits for all of num_messages)."""
    got = []
    deadline = time.monotonic() + 1.0
    while (left := deadline - time.monotonic()) > 0:
        got += consumer.consume(10_000, timeout=min(0.1, left))
        if got and len(got) % 10_000:
            break
    return got


@pytest.fixture
def topic(kafka) -> str:
    """A fresh topic with PARTITIONS partitions."""
    name = unique_topic("src")
    ensure_topic(kafka.address, name, PARTITIONS)
    return name


def source_options(kafka, topic: str, **extra: object) -> dict[str, str]:
    options = {"bootstrap": kafka.address, "topic": topic, "startingOffsets": "earliest"}
    options.update({k: str(v) for k, v in extra.items()})
    return options


def run_available_now(spark, options: dict, checkpoint: Path) -> tuple[DataFrame, list[dict]]:
    """One `trigger(availableNow=True)` run; the rows it read and its non-empty progress.

    Each run writes its own Parquet folder from foreachBatch: the memory sink cannot resume
    from a checkpoint, and a file sink's log belongs to one output folder.
    """
    register(spark)
    out = checkpoint.parent / f"out-{uuid.uuid4().hex[:12]}"

    def write(batch: DataFrame, batch_id: int) -> None:
        batch.write.mode("overwrite").parquet(str(out / f"batch={batch_id}"))

    query = (
        spark.readStream.format(SOURCE_NAME)
        .options(**options)
        .load()
        .writeStream.foreachBatch(write)
        .option("checkpointLocation", str(checkpoint))
        .trigger(availableNow=True)
        .start()
    )
    assert query.awaitTermination(180), "the availableNow query did not finish"
    progress = [p for p in query.recentProgress if p["numInputRows"]]
    if not out.exists():
        return spark.createDataFrame([], SCHEMA), progress
    return spark.read.parquet(str(out)).drop("batch"), progress


# -- producer ---------------------------------------------------------------------------


def test_produce_lines_delivers_everything_keyed_by_visitor(kafka, topic):
    lines = beacons(500)
    report = produce_lines(kafka.address, topic, lines)
    assert (report.sent, report.delivered, report.failed) == (500, 500, 0)
    records = consume_all(kafka.address, topic, PARTITIONS)
    assert sorted(m.value().decode() for m in records) == sorted(lines)
    partitions_of = {}
    for m in records:
        partitions_of.setdefault(m.key().decode(), set()).add(m.partition())
    assert len(partitions_of) == 7
    assert all(len(p) == 1 for p in partitions_of.values()), "a visitor spans partitions"


def test_produce_live_paces_and_reports_kinds(kafka, topic):
    config = dataclasses.replace(SMALL, visitors=600, dirty_fraction=0.1)
    progress: list[str] = []
    report = produce_live(kafka.address, topic, config, 1500, 1.0, progress.append)
    assert report.failed == 0 and report.delivered == report.sent
    assert not report.exhausted and 1000 <= report.sent <= 1600
    assert report.rate == pytest.approx(1500, rel=0.25)
    expected = Counter(kind for _, _, kind in list(iter_lines(config))[: report.sent])
    assert report.sent_by_kind == expected
    assert len(consume_all(kafka.address, topic, PARTITIONS)) == report.sent


def test_produce_live_stops_when_the_generator_runs_out(kafka, topic):
    total = sum(1 for _ in iter_lines(SMALL))
    report = produce_live(kafka.address, topic, SMALL, 1e6, 30.0)
    assert report.exhausted and report.sent == report.delivered == total


def test_delivery_failures_are_counted():
    from expo_platform.ops.processes import free_port

    report = produce_lines(
        f"127.0.0.1:{free_port()}", "nowhere", beacons(20), conf={"message.timeout.ms": "1000"}
    )
    assert report.sent == 20 and report.failed == 20 and report.delivered == 0
    assert sum(report.errors.values()) == 20


# -- offsets planning (pure) --------------------------------------------------------------


def test_split_budget_is_proportional_exact_and_bounded():
    start, latest = {0: 0, 1: 10, 2: 5}, {0: 100, 1: 10, 2: 55}
    end = split_budget(start, latest, 30)
    assert sum(end[p] - start[p] for p in end) == 30
    assert all(start[p] <= end[p] <= latest[p] for p in end)
    assert end[1] == 10 and end[0] - start[0] > end[2] - start[2]
    assert split_budget(start, latest, 1000) == latest
    assert split_budget({}, {0: 3}, 2) == {0: 2}  # partitions missing from start begin at 0


def test_starting_offsets_forms():
    assert parse_starting_offsets("earliest", "b") == "earliest"
    assert parse_starting_offsets('{"1": 5, "0": -2}', "b") == {1: 5, 0: -2}
    assert parse_starting_offsets('{"b": {"0": 7}}', "b") == {0: 7}
    with pytest.raises(ExpoError):
        parse_starting_offsets("[1]", "b")


def test_builtin_kafka_options_carry_zookeeper_offsets(settings):
    options = builtin_kafka_options(settings, {1: 40, 0: 12}, maxOffsetsPerTrigger=1000)
    assert options["kafka.bootstrap.servers"] == settings.stream.kafka_bootstrap
    assert options["subscribe"] == settings.stream.kafka_topic
    assert json.loads(options["startingOffsets"]) == {
        settings.stream.kafka_topic: {"0": 12, "1": 40}
    }
    assert options["maxOffsetsPerTrigger"] == "1000"
    assert builtin_kafka_options(settings, {})["startingOffsets"] == "earliest"


# -- the Spark source ---------------------------------------------------------------------


def test_available_now_reads_exactly_the_produced_messages(spark, kafka, topic, tmp_path):
    lines = beacons(300)
    produce_lines(kafka.address, topic, lines, conf=EXACT_END_OFFSETS)
    out, progress = run_available_now(spark, source_options(kafka, topic), tmp_path / "ck")
    rows = out.collect()
    assert len(rows) == 300
    # The source gives a message's bytes as sent; `uniform` makes them a string.
    assert sorted(r.value for r in rows) == sorted(line.encode() for line in lines)
    assert {r.key for r in rows} == {f"v-{i}" for i in range(7)}
    assert {r.topic for r in rows} == {topic}
    by_partition = Counter(r.partition for r in rows)
    for p, n in by_partition.items():
        assert sorted(r.offset for r in rows if r.partition == p) == list(range(n))
    assert all(r.timestamp is not None for r in rows)
    assert json.loads(progress[-1]["sources"][0]["endOffset"]) == {
        str(p): by_partition.get(p, 0) for p in range(PARTITIONS)
    }

    # The same checkpoint again: only what arrived since.
    more = beacons(40, start=300)
    produce_lines(kafka.address, topic, more, conf=EXACT_END_OFFSETS)
    out2, _ = run_available_now(spark, source_options(kafka, topic), tmp_path / "ck")
    assert sorted(r.value.decode() for r in out2.collect()) == sorted(more)

    # Nothing new: the run ends without a batch.
    out3, progress3 = run_available_now(spark, source_options(kafka, topic), tmp_path / "ck")
    assert out3.count() == 0 and progress3 == []


def test_fresh_checkpoint_starts_from_zookeeper_offsets(
    spark,
    kafka,
    zookeeper,
    topic,
    tmp_path,
):
    produce_lines(kafka.address, topic, beacons(90), conf=EXACT_END_OFFSETS)
    seen = consume_all(kafka.address, topic, PARTITIONS)
    # Committed: the first 10 records of partition 0 and all of partition 1; none of 2.
    ends = Counter(m.partition() for m in seen)
    committed = {0: 10, 1: ends[1]}
    consumer = f"c-{topic}"
    with ZkOffsets(zookeeper.address, consumer) as offsets:
        offsets.commit(topic, committed)
    options = source_options(kafka, topic, zookeeper=zookeeper.address, consumer=consumer)
    out, _ = run_available_now(spark, options, tmp_path / "fresh")
    got = {(r.partition, r.offset) for r in out.collect()}
    expected = {
        (m.partition(), m.offset()) for m in seen if m.offset() >= committed.get(m.partition(), 0)
    }
    assert got == expected and len(got) == 90 - 10 - ends[1]


def test_foreach_batch_commits_end_offsets_to_zookeeper(
    spark,
    kafka,
    zookeeper,
    topic,
    tmp_path,
):
    """The documented app pattern: write, then commit max(offset)+1 per partition."""
    produce_lines(kafka.address, topic, beacons(120), conf=EXACT_END_OFFSETS)
    register(spark)
    consumer, sink = f"fb-{topic}", tmp_path / "sink"

    def write(batch: DataFrame, batch_id: int) -> None:
        batch.persist()
        batch.write.mode("append").parquet(str(sink))
        with ZkOffsets(zookeeper.address, consumer) as offsets:
            offsets.commit(topic, end_offsets_of_batch(batch))
        batch.unpersist()

    options = source_options(
        kafka, topic, zookeeper=zookeeper.address, consumer=consumer, maxOffsetsPerTrigger=50
    )
    query = (
        spark.readStream.format(SOURCE_NAME)
        .options(**options)
        .load()
        .writeStream.foreachBatch(write)
        .option("checkpointLocation", str(tmp_path / "ck"))
        .trigger(availableNow=True)
        .start()
    )
    assert query.awaitTermination(180)
    ends = Counter(m.partition() for m in consume_all(kafka.address, topic, PARTITIONS))
    with ZkOffsets(zookeeper.address, consumer) as offsets:
        assert offsets.read(topic) == dict(sorted(ends.items()))
    assert spark.read.parquet(str(sink)).count() == 120


def test_max_offsets_per_trigger_splits_into_batches(spark, kafka, topic, tmp_path):
    produce_lines(kafka.address, topic, beacons(250), conf=EXACT_END_OFFSETS)
    options = source_options(kafka, topic, maxOffsetsPerTrigger=60)
    out, progress = run_available_now(spark, options, tmp_path / "ck")
    sizes = [p["numInputRows"] for p in progress]
    assert sizes == [60, 60, 60, 60, 10]
    assert out.select("partition", "offset").distinct().count() == 250


def test_probe_mode_sees_the_tail_of_batched_production(spark, kafka, topic, tmp_path):
    """Tansu's end offset hides a partition's last record batch; probing reads it anyway."""
    produce_lines(kafka.address, topic, beacons(200))  # batched: few, large record batches
    plain, _ = run_available_now(spark, source_options(kafka, topic), tmp_path / "plain")
    assert plain.count() < 200  # the documented Tansu gap
    probed, _ = run_available_now(
        spark, source_options(kafka, topic, endOffsets="probe"), tmp_path / "probe"
    )
    assert probed.count() == 200


def test_offsets_past_the_broker_end_fail_clearly(
    spark,
    kafka,
    zookeeper,
    topic,
    tmp_path,
):
    """A restarted in-memory broker forgets its data; committed offsets then lie past its end."""
    produce_lines(kafka.address, topic, beacons(5), conf=EXACT_END_OFFSETS)
    consumer = f"lost-{topic}"
    with ZkOffsets(zookeeper.address, consumer) as offsets:
        offsets.commit(topic, {0: 1000})
    options = source_options(kafka, topic, zookeeper=zookeeper.address, consumer=consumer)
    with pytest.raises(Exception, match="failOnDataLoss"):
        run_available_now(spark, options, tmp_path / "ck")
    options["failOnDataLoss"] = "false"
    out, _ = run_available_now(spark, options, tmp_path / "ck2")
    assert out.count() == 5


def test_a_broker_that_stops_answering_is_unreachable_not_data_loss(
    kafka,
    topic,
    monkeypatch,
):
    """A broker frozen between the metadata and the offsets request: confluent-kafka times the
    request out with OFFSET_INVALID (-1001) per partition, not an error. Planning must fail as
    an outage (the app restarts the query), not as offsets before the query's position."""
    produce_lines(kafka.address, topic, beacons(30), conf=EXACT_END_OFFSETS)
    monkeypatch.setattr(kafka_source, "METADATA_TIMEOUT", 2.0)
    reader = ExpoKafkaStreamReader(SourceOptions.parse(source_options(kafka, topic)))
    position = from_json_offsets(reader.latestOffset(reader.initialOffset(), ReadAllAvailable()))
    assert sum(position.values()) == 30  # the broker answers before the outage
    partitions = reader._partition_ids()
    kafka.pause()
    try:
        with pytest.raises(ExpoError, match=rf"Kafka at {kafka.address} is unreachable: no latest"):
            reader._end_offsets(partitions)
    finally:
        kafka.resume()
    assert reader._end_offsets(partitions) == position


def test_read_stream_has_the_uniform_schema(spark, settings, kafka, topic):
    local = settings.replace(
        stream={"kafka_bootstrap": kafka.address, "kafka_topic": topic, "zookeeper": "127.0.0.1:1"}
    )
    df = read_stream(spark, local, startingOffsets="earliest")
    assert df.isStreaming
    uniform = [(f.name, StringType() if f.name == "value" else f.dataType) for f in SCHEMA]
    assert [(f.name, f.dataType) for f in df.schema] == uniform
    with pytest.raises(ExpoError):
        read_stream(spark, local, fmt="csv")


def test_produce_realtime_sends_a_backlog_then_follows_the_clock(kafka, topic):
    """Live traffic: the last minutes at once, then each beacon when the clock reaches it."""
    config = dataclasses.replace(SMALL, dirty_fraction=0.0)
    started = time.time()
    progress: list[str] = []
    report = produce_realtime(kafka.address, topic, config, 10, 10, 4.0, progress.append)
    ended = time.time()
    assert report.failed == 0 and report.delivered == report.sent
    stamps = sorted(
        json.loads(m.value())["ts"] / 1000 for m in consume_all(kafka.address, topic, PARTITIONS)
    )
    assert len(stamps) == report.sent
    # Stamped with the wall clock: nothing from the future, nothing older than the backlog.
    assert started - 10 * 60 <= stamps[0] and stamps[-1] <= ended
    backlog = [t for t in stamps if t < started]
    # About 10 beacons/s over the last ten minutes (the rate ramps up to its steady value).
    assert 0.6 * 6000 <= len(backlog) <= 1.2 * 6000
    assert 5 <= len(stamps) - len(backlog) <= 120  # then about 10/s for 4 s
    assert any("live" in line for line in progress)


def test_produce_realtime_can_start_ahead_of_the_clock(kafka, topic):
    """With start_in, the generator's warm-up happens before the first line is due: nothing
    is sent early or in a burst, and the duration counts from the traffic's start."""
    config = dataclasses.replace(SMALL, dirty_fraction=0.0)
    started = time.time()
    report = produce_realtime(kafka.address, topic, config, 20, 0, 3.0, start_in=2.0)
    ended = time.time()
    assert report.failed == 0 and report.sent > 0
    stamps = sorted(
        json.loads(m.value())["ts"] / 1000 for m in consume_all(kafka.address, topic, PARTITIONS)
    )
    assert len(stamps) == report.sent
    assert started + 2.0 <= stamps[0] and stamps[-1] <= ended
    assert ended - started >= 5.0  # 2 s ahead, then 3 s of traffic
    assert report.sent <= 20 * 3 * 2  # about 20/s for 3 s, no backlog
