"""The speed layer's parse and count steps on hand-built micro-batches: blank messages,
late beacons, duplicates within a batch, across batches and across event hours, replays."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from pyspark.sql import functions as F

from expo_platform.core import beacons as bc
from expo_platform.serving.store import MetricStore
from expo_platform.speed import counted, parse
from expo_platform.speed.app import stream_source
from expo_platform.speed.context import BatchContext
from expo_platform.speed.files import EVENT_HOUR, StreamFiles
from expo_platform.speed.step_times import StepTimes
from tests import clickstream as cs

MESSAGES = "value string, partition int, offset long, timestamp timestamp"
PRODUCED = datetime(2026, 3, 2, 11, 30, tzinfo=UTC)


def messages(spark, values: list[str | None], first_offset: int = 0):
    """A micro-batch of Kafka messages on partition 0."""
    rows = [(v, 0, first_offset + i, PRODUCED) for i, v in enumerate(values)]
    return spark.createDataFrame(rows, MESSAGES)


def count_batch(spark, settings, store, key, values, watermark=None, first_offset=0):
    """Parse and count one batch as `MicroBatch` does; returns (counted event ids, reasons)."""
    ctx = BatchContext(spark, settings, StreamFiles(settings), store, StepTimes(), key)
    parsed = parse.parse_messages(messages(spark, values, first_offset)).cache()
    batch = counted.classify(ctx, parse.beacons(parsed), watermark)
    counted.write(ctx, batch.counted)
    ids = sorted(r["event_id"] for r in batch.counted.collect())
    reasons = {
        r["event_id"]: r["reason"]
        for r in batch.classified.where(F.col("reason").isNotNull()).collect()
    }
    return ids, reasons, parsed


def line(event_id: str, ts: int) -> str:
    return json.dumps(cs.b(ts) | {"event_id": event_id})


def test_parse_keeps_blank_messages_marked_so_every_offset_counts(spark):
    parsed = parse.parse_messages(messages(spark, [line("a", cs.at(0, 1)), "  ", None, "{"]))
    rows = sorted(parsed.select("offset", parse.BLANK, "reason").collect())
    assert [r[parse.BLANK] for r in rows] == [False, True, True, False]
    assert [rows[0]["reason"], rows[3]["reason"]] == [None, "malformed_json"]
    assert parse.beacons(parsed).count() == 2  # the blank ones are not beacons
    assert parse.produced_quantiles(parsed) == [int(PRODUCED.timestamp() * 1000)] * 3


def test_a_valid_beacon_from_beyond_the_year_9999_has_no_event_hour_and_crashes_nothing(spark):
    far = [line("far", 9_300_000_000_000_000), line("y10k", 253_402_300_800_000)]
    near = line("near", 253_402_300_800_000 - 1)  # the last millisecond of the year 9999
    parsed = parse.parse_messages(messages(spark, [*far, near]))
    hours = {r["event_id"]: (r["reason"], r[EVENT_HOUR]) for r in parsed.collect()}
    beyond = ("bad_field", None)
    assert hours == {"far": beyond, "y10k": beyond, "near": (None, "9999-12-31-23")}


def test_duplicates_are_judged_per_event_hour_against_earlier_batches_never_a_replay(
    spark, settings
):
    ten, eleven = cs.at(0, 10), cs.at(1, 10)  # two event hours
    with MetricStore(settings.lake.metric_store) as store:
        first = [line("a", ten), line("b", ten), line("b", ten + 1), ""]
        ids, reasons, _ = count_batch(spark, settings, store, "0000-00000000", first)
        # Within a batch the first by ts counts; the blank message is nothing.
        assert ids == ["a", "b"]
        assert reasons == {}  # duplicates are told by `counted`, not marked in `classified`
        second = [
            line("a", ten),  # re-sent: counted in its hour by the batch before
            line("b", eleven),  # the same id in another hour: the batch layer counts it too
            line("c", ten),
            line("c", ten),  # the same beacon twice in one batch: counted once
            line("late", cs.at(0, 1)),  # behind the watermark
        ]
        watermark = cs.at(0, 5)
        ids, reasons, _ = count_batch(
            spark, settings, store, "0000-00000001", second, watermark, first_offset=4
        )
        assert ids == ["b", "c"]
        assert reasons == {"late": bc.LATE}
        hours = {
            r["event_id"]: r[EVENT_HOUR]
            for r in spark.read.parquet(
                str(StreamFiles(settings).counted_folder("0000-00000001"))
            ).collect()
        }
        assert hours["b"] != hours["c"]
        # A replay of the first batch is compared with the batches before it, not with its
        # own earlier run: it counts the same beacons again, into the same folder.
        ids, _, _ = count_batch(spark, settings, store, "0000-00000000", first)
        assert ids == ["a", "b"]
        # A new epoch (a lost checkpoint) still knows what the earlier one counted.
        ids, _, _ = count_batch(spark, settings, store, "0001-00000000", [line("a", ten)])
        assert ids == []


def test_the_query_reads_kafka_through_one_source(spark, settings):
    """One streaming relation in the query's plan: every micro-batch reads its offsets once
    (the de-duplication branch of before was a second scan of the same topic)."""
    source = stream_source(spark, settings.replace(stream={"kafka_bootstrap": "127.0.0.1:9"}))
    plan = source._jdf.queryExecution().analyzed().toString()
    assert plan.count("StreamingRelation") == 1, plan
    assert source.isStreaming
