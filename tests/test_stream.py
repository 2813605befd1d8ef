"""The speed layer against the real broker and ZooKeeper: same numbers as the batch layer."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from definitions import build_defs
from expo_platform import lake
from expo_platform.core import beacons as bc
from expo_platform.core.hours import (
    HOUR_MS,
    hour_iso,
    hour_key,
    hour_of_ms,
    hour_start_ms,
    parse_hour,
)
from expo_platform.core.metrics import (
    ALLOWED_ERROR,
    EXPERIMENT_METRICS,
    SKETCHES_SCHEMA,
    estimated_visitors,
    visitor_sketches,
)
from expo_platform.devtools.generator import GeneratorConfig, iter_lines, write_landing
from expo_platform.devtools.producer import produce_lines
from expo_platform.errors import ExpoError
from expo_platform.ops.dagster_home import prepare_dagster_home
from expo_platform.serving.store import MetricStore
from expo_platform.speed import sketches as sketch_step
from expo_platform.speed.app import run_stream
from expo_platform.speed.files import StreamFiles
from expo_platform.speed.micro_batch import MicroBatch, continues_visits_before
from expo_platform.speed.offsets import ZkOffsets
from expo_platform.speed.rolling import write_rolling
from expo_platform.speed.step_times import StepTimes
from sensors.batch_runner import run_batch
from tests import clickstream as cs
from tests.fixtures_services import new_topic
from tests.helpers import lake_settings, landed_lines
from tests.test_batch_layer import PROJECT

START = parse_hour("2026-03-02T10")
TRAFFIC = GeneratorConfig(start=START, hours=3, visitors=700, seed=5, dirty_fraction=0.0)
EXPO = str(Path(sys.executable).with_name("expo"))
STREAM_FILES = "stream-*.json"  # the landing files the stream writes


STEPS = ("read", "land", "classify", "counted_write", "quality", "sessions", "metrics", "rolling")


def stream_settings(settings, kafka, zookeeper, topic, **overrides):
    stream = {
        "kafka_bootstrap": kafka.address,
        "kafka_topic": topic,
        "zookeeper": zookeeper.address,
        "consumer": f"c-{topic}",
        "kafka_end_offsets": "probe",
        "max_offsets": 1500,
        "watermark_minutes": 30,
    }
    return settings.replace(stream=stream | overrides, batch={"max_reject_rate": 0.5})


def points(settings, layer: str) -> dict:
    with MetricStore(settings.lake.metric_store) as store:
        return store.values(layer=layer, quality=None)


def assert_speed_equals_batch(conf, batch: dict, traffic: list[str]) -> dict:
    """The stream landed every line of the traffic (a replayed batch may land some twice,
    which the batch layer's de-duplication removes), and hours START and START + 1 (final
    once the stream has passed START + 2) have the batch layer's experiment metrics over
    those lines (`batch_points`); visitors_24h, an estimate from sketches, within the 2%
    METRICS.md allows. Returns the speed layer's points."""
    assert set(landed_lines(conf.lake.landing_dir, STREAM_FILES)) == set(traffic)
    speed = points(conf, "speed")
    final_hours = {hour_iso(START), hour_iso(START + timedelta(hours=1))}
    compared = 0
    for key, value in batch.items():
        if key[0] in EXPERIMENT_METRICS and key[4] in final_hours:
            tolerance = ALLOWED_ERROR.get(key[0], 1e-6)
            assert speed.get(key) == pytest.approx(value, rel=tolerance), key
            compared += 1
    assert compared > 200
    assert {k for k in speed if k[0] in EXPERIMENT_METRICS and k[4] in final_hours} == {
        k for k in batch if k[0] in EXPERIMENT_METRICS and k[4] in final_hours
    }
    return speed


@pytest.fixture(scope="module")
def traffic():
    """Three hours of clean generated traffic, in time order."""
    return [line for _, line, _ in iter_lines(TRAFFIC)]


@pytest.fixture(scope="module")
def batch_points(spark, session_lake, tmp_path_factory, traffic) -> dict:
    """The batch layer's points over the module's traffic, landed by hour: the hourly asset
    jobs of hours START to START + 2, metrics of START and START + 1.

    The batch layer's results follow from the landed lines alone, so one run serves every
    test whose stream landed the traffic (`assert_speed_equals_batch` checks that it did).
    """
    root = tmp_path_factory.mktemp("batch-of-the-traffic")
    (root / "lake").mkdir()
    conf = lake_settings(root / "lake", root / "dagster", root / "metrics.sqlite").replace(
        spark={"conf": session_lake.spark.conf}
    )
    write_landing(TRAFFIC, conf.lake.landing_dir)
    assert Counter(landed_lines(conf.lake.landing_dir)) == Counter(traffic)
    with pytest.MonkeyPatch.context() as patched:
        patched.setenv("DAGSTER_HOME", str(conf.local.dagster_home))
        prepare_dagster_home(conf, PROJECT)
        run_batch(build_defs(conf), START, START + timedelta(hours=1), progress=lambda line: None)
    return points(conf, "batch")


def test_speed_equals_batch_once_the_next_hour_has_passed(
    spark,
    settings,
    kafka,
    zookeeper,
    traffic,
    batch_points,
):
    topic = new_topic(kafka, "stream", 4, traffic)
    conf = stream_settings(settings, kafka, zookeeper, topic)
    report = run_stream(conf, until_idle=True, spark=spark, progress=lambda line: None)
    assert report.batches >= 3  # maxOffsetsPerTrigger splits the backlog

    # Every message reached the landing zone, once.
    assert Counter(landed_lines(conf.lake.landing_dir, STREAM_FILES)) == Counter(traffic)

    # The offsets committed to ZooKeeper are the end of the topic.
    with ZkOffsets(conf.stream.zookeeper, conf.stream.consumer) as zk:
        assert sum(zk.read(topic).values()) == len(traffic)

    speed = assert_speed_equals_batch(conf, batch_points, traffic)
    # Data quality of the stream: everything valid, nothing late.
    valid = sum(v for k, v in speed.items() if k[0] == "beacons_valid")
    assert valid == len(traffic)
    assert sum(v for k, v in speed.items() if k[0] == "beacons_late") == 0

    # Rolling unique visitors, stamped with the newest event-time minute: the last hour's
    # exact, the day's from sketches (and the beacons of the window's edge hours).
    newest = max(k[4] for k in speed if k[0] == "visitors_rolling_24h")
    end = int(datetime.fromisoformat(newest).timestamp() * 1000) + 60_000
    beacons = [json.loads(line) for line in traffic]

    def visitors_since(start_ms: int) -> int:
        return len(
            {
                b["visitor_id"]
                for b in beacons
                if start_ms <= b["ts"] < end
                and any(
                    e["id"] == "checkout-button" and e["variant"] == "control"
                    for e in b["experiments"]
                )
            }
        )

    key = ("checkout-button", "control", "assigned", newest)
    assert speed[("visitors_rolling_1h", *key)] == visitors_since(end - HOUR_MS)
    day = visitors_since(end - 24 * HOUR_MS)
    assert day > speed[("visitors_rolling_1h", *key)]  # the hours before count too
    assert speed[("visitors_rolling_24h", *key)] == pytest.approx(day, rel=0.02)
    files = StreamFiles(conf)
    assert files.epoch() == 0

    # Each batch's progress says where its time went, from its Kafka read on.
    batches = [json.loads(p.read_text()) for p in sorted(files.progress_dir.glob("*.json"))]
    with_messages = [b for b in batches if b["messages"]]
    assert len(with_messages) == report.batches
    for b in with_messages:
        assert set(STEPS) <= set(b["steps"]), b["steps"]
        assert all(seconds >= 0 for seconds in b["steps"].values())
        assert b["batch_seconds"] >= sum(b["steps"].values()) - 0.01


def test_an_hour_whose_sessions_or_sketches_folder_is_gone_is_rebuilt_whole(
    spark,
    settings,
    kafka,
    zookeeper,
    traffic,
    batch_points,
):
    """A batch re-sessionizes only the sessions it touches and keeps the others' rows; it
    merges its visitors into the hours' sketches. A crash between moving an hour's old folder
    aside and moving the new one in leaves the hour without one: the next batch must rebuild
    it from all the hour's beacons, and sketches too for an hour the batch has no beacon of."""
    topic = new_topic(kafka, "stream-lost", 4)
    conf = stream_settings(settings, kafka, zookeeper, topic)
    middle = hour_start_ms(START) + 90 * 60_000  # half way through hour START + 1
    produce_lines(kafka.address, topic, [t for t in traffic if json.loads(t)["ts"] < middle])
    run_stream(conf, until_idle=True, spark=spark, progress=lambda line: None)
    files = StreamFiles(conf)
    lost = [
        files.session_path(START + timedelta(hours=1)),
        files.sketch_path(START + timedelta(hours=1)),
        files.sketch_path(START),  # no beacon of the second run is in this hour
    ]
    for folder in lost:
        assert folder.is_dir()
        shutil.rmtree(folder)

    produce_lines(kafka.address, topic, [t for t in traffic if json.loads(t)["ts"] >= middle])
    run_stream(conf, until_idle=True, spark=spark, progress=lambda line: None)
    assert_speed_equals_batch(conf, batch_points, traffic)


def test_a_batch_lost_with_the_checkpoint_after_its_counted_write_still_reaches_the_sketches(
    spark,
    settings,
    kafka,
    zookeeper,
    traffic,
    monkeypatch,
    batch_points,
):
    """The second batch crashes after writing its counted beacons and before merging them
    into the sketches, and the checkpoint is lost. The next epoch reads the batch's messages
    again and finds them counted (duplicates): the sketches must still take in their visitors."""
    topic = new_topic(kafka, "stream-crash", 4, traffic)
    conf = stream_settings(settings, kafka, zookeeper, topic)
    update_sketches = sketch_step.update

    def crash_in_second_batch(ctx, *args):
        if ctx.key != "0000-00000000":
            raise RuntimeError("simulated crash before the sketches")
        update_sketches(ctx, *args)

    with monkeypatch.context() as patched:
        patched.setattr(sketch_step, "update", crash_in_second_batch)
        with pytest.raises(ExpoError, match="the streaming query failed"):
            run_stream(conf, until_idle=True, spark=spark, progress=lambda line: None)
    files = StreamFiles(conf)
    assert [d.name for d in files.batch_folders("9999")] == [
        "batch=0000-00000000",
        "batch=0000-00000001",
    ]
    assert [p.name for p in files.progress_dir.glob("*.json")] == ["0000-00000000.json"]
    shutil.rmtree(files.checkpoint)
    run_stream(conf, until_idle=True, spark=spark, progress=lambda line: None)
    assert StreamFiles(conf).epoch() == 1

    beacons = [json.loads(line) for line in traffic]
    for hour in (START + timedelta(hours=h) for h in range(3)):
        start = hour_start_ms(hour)
        assigned = {
            (e["id"], e["variant"], b["visitor_id"])
            for b in beacons
            if start <= b["ts"] < start + HOUR_MS
            for e in b["experiments"]
        }
        exact = Counter((experiment, variant) for experiment, variant, _ in assigned)
        sketched = lake.read_folders(spark, [files.sketch_path(hour)], SKETCHES_SCHEMA)
        estimates = {
            (r["experiment"], r["variant"]): r["v"]
            for r in estimated_visitors(sketched, "v").where("population = 'assigned'").collect()
        }
        assert estimates == dict(exact), hour
    assert_speed_equals_batch(conf, batch_points, traffic)


@pytest.mark.parametrize("newest_minute", [59.5, 36.5], ids=["end-on-the-hour", "end-mid-hour"])
def test_rolling_visitors_count_exactly_the_window_s_edges(spark, settings, newest_minute):
    """The rolling window is [end - 24h, end), end the minute after the newest event time: a
    visitor seen at end - 24h counts, one seen a minute earlier does not; the last hour starts
    at end - 1h. The edge hours are read as beacons, the hours between them as sketches."""
    newest = cs.at(24, newest_minute)
    end = (newest // cs.MIN + 1) * cs.MIN
    seen = {
        "too-old": end - 24 * HOUR_MS - cs.MIN,
        "first": end - 24 * HOUR_MS,
        "middle": cs.at(12, 10),
        "day-only": end - HOUR_MS - cs.MIN,
        "last-hour": end - HOUR_MS,
        "newest": newest,
    }
    counted = []
    for visitor, ts in seen.items():
        hour = hour_of_ms(ts)
        line = json.dumps(cs.b(ts, visitor=visitor, session=visitor))
        lines = spark.createDataFrame([(line,)], "value string")
        classified = bc.classify_hour(lines, hour_start_ms(hour) // HOUR_MS)
        counted.append(
            bc.counted_beacons(classified).withColumn("hourly_partitioner", F.lit(hour_key(hour)))
        )
    beacons = lake.union_all(counted).localCheckpoint()
    files = StreamFiles(settings)
    key = "0000-00000000"
    beacons.write.partitionBy("hourly_partitioner").parquet(str(files.beacons_dir / f"batch={key}"))
    sketches = visitor_sketches(beacons, "hourly_partitioner")
    sketches.write.partitionBy("hourly_partitioner").parquet(str(files.sketches_dir))

    with MetricStore(settings.lake.metric_store) as store:
        write_rolling(
            MicroBatch(settings, store, lambda offsets: None).context(spark, key), newest, key
        )
    rolling = points(settings, "speed")
    stamp = datetime.fromtimestamp((end - cs.MIN) / 1000, UTC).strftime("%Y-%m-%dT%H:%M:00Z")
    for population in ("assigned", "qualified"):
        assert rolling[("visitors_rolling_1h", "exp", "A", population, stamp)] == 2
        assert rolling[("visitors_rolling_24h", "exp", "A", population, stamp)] == 5


def test_bad_and_late_messages_are_counted_and_kept_and_a_restart_counts_nothing_twice(
    spark,
    settings,
    kafka,
    zookeeper,
    traffic,
):
    topic = new_topic(kafka, "late", 2)
    first = traffic[:1500]  # about the first hour and a half
    newest = max(json.loads(line)["ts"] for line in first)
    # A beacon from a clock three hours ahead must not push the watermark.
    ahead = json.loads(first[5]) | {"event_id": "ahead-1", "ts": newest + 3 * 3_600_000}
    first = [*first, json.dumps(ahead)]
    produce_lines(kafka.address, topic, first)
    conf = stream_settings(settings, kafka, zookeeper, topic, max_offsets=0)
    run_stream(conf, until_idle=True, spark=spark, progress=lambda line: None)
    before = points(conf, "speed")

    late = json.loads(first[0]) | {"event_id": "late-1", "ts": newest - 45 * 60_000}
    wrong_type = json.loads(first[1]) | {"event_id": "bad-1", "type": "click"}
    no_ts = {k: v for k, v in json.loads(first[2]).items() if k != "ts"} | {"event_id": "nots"}
    huge = json.loads(first[3]) | {"event_id": "huge-1"}
    # Valid but for an event time after the year 9999: no hour to count in (it once crashed
    # every batch that held it); and a beacon whose bytes are not UTF-8.
    far = json.dumps(json.loads(first[4]) | {"event_id": "far-1", "ts": 253_402_300_800_000})
    not_utf8 = json.dumps(json.loads(first[5]) | {"event_id": "bytes-1"}).encode()
    not_utf8 = not_utf8.replace(b'"bytes-1"', b'"bytes-\xff"')
    bad = [
        json.dumps(late),
        json.dumps(wrong_type),
        json.dumps(no_ts),
        json.dumps(huge).replace(f'"ts": {huge["ts"]}', '"ts": 1' + "0" * 30),
        "not json at all",
        "{" * 5000,
        "[" * 5000,
        far,
        not_utf8,
        first[-10],  # a re-sent beacon of the first run: its hour's counted beacons know it
    ]
    assert produce_lines(kafka.address, topic, bad).failed == 0
    # A message over the client's message.max.bytes is refused, counted with its reason.
    oversized = produce_lines(kafka.address, topic, [b"x" * 2_000_000])
    assert (oversized.failed, dict(oversized.errors)) == (1, {"refused: MSG_SIZE_TOO_LARGE": 1})
    run_stream(conf, until_idle=True, spark=spark, progress=lambda line: None)
    after = points(conf, "speed")

    # Nothing counted twice, nothing bad counted: experiment metrics are unchanged.
    metrics_of = lambda pts: {k: v for k, v in pts.items() if k[0] in EXPERIMENT_METRICS}  # noqa: E731
    assert metrics_of(after) == metrics_of(before)
    late_hour = hour_iso(parse_hour(f"{_hour_key(late['ts'])}"))
    assert after[("beacons_late", "", "", "", late_hour)] == 1
    assert sum(v for k, v in after.items() if k[0] == "beacons_late") == 1
    bad_hour = hour_iso(parse_hour(_hour_key(wrong_type["ts"])))
    assert after[("beacons_rejected_bad_field", "", "", "", bad_hour)] == 1
    duplicates = lambda pts: sum(v for k, v in pts.items() if k[0] == "beacons_duplicate")  # noqa: E731
    assert (duplicates(before), duplicates(after)) == (0, 1)
    # The query keeps no state of its own: the counted beacons are the de-duplication state.
    assert not (StreamFiles(conf).checkpoint / "state").exists()

    # The late and the invalid-but-dated beacons reach the landing zone: the batch layer
    # decides about them. The undatable ones are in the quarantine with their reason.
    landed = landed_lines(conf.lake.landing_dir, "stream-0000-00000001-*.json")
    assert set(landed) == {bad[0], bad[1], bad[-1]}
    quarantine = spark.read.parquet(str(StreamFiles(conf).quarantine_dir / "batch=0000-00000001"))
    reasons = sorted((r["reason"], r["raw"][:20]) for r in quarantine.collect())
    assert reasons == sorted(
        [
            ("bad_field", bad[3][:20]),
            ("bad_field", far[:20]),
            ("malformed_json", "not json at all"),
            ("malformed_json", "{" * 20),
            ("malformed_json", "[" * 20),
            # Kept readable: the bad byte is U+FFFD.
            ("malformed_json", not_utf8.decode("utf-8", "replace")[:20]),
            ("missing_field", bad[2][:20]),
        ]
    )
    with ZkOffsets(conf.stream.zookeeper, conf.stream.consumer) as zk:
        assert sum(zk.read(topic).values()) == len(first) + len(bad)

    # The checkpoint is lost: the next start resumes from ZooKeeper's offsets (a new epoch),
    # so nothing already counted is read again. The counted beacons of the earlier epoch
    # still tell a re-sent beacon from a new one.
    shutil.rmtree(StreamFiles(conf).checkpoint)
    nxt = traffic[1500]  # the next line of traffic: on time
    produce_lines(kafka.address, topic, [nxt, nxt, first[-20]])
    run_stream(conf, until_idle=True, spark=spark, progress=lambda line: None)
    assert StreamFiles(conf).epoch() == 1
    resumed = points(conf, "speed")
    valid = lambda pts: sum(v for k, v in pts.items() if k[0] == "beacons_valid")  # noqa: E731
    assert valid(resumed) == valid(after) + 1
    assert duplicates(resumed) == duplicates(after) + 2


def _hour_key(ts: int) -> str:
    from expo_platform.core.hours import hour_key, hour_of_ms

    return hour_key(hour_of_ms(ts))


def test_expo_generate_produces_live_traffic(kafka):
    from tests.test_kafka_source import consume_all

    topic = new_topic(kafka, "live", 2)
    args = ["--kafka", kafka.address, "--replay", "--topic", topic, "--rate", "400"]
    args += ["--duration", "3"]
    result = subprocess.run(
        [
            EXPO,
            "generate",
            "--start",
            "2026-03-02T10",
            "--hours",
            "1",
            "--visitors",
            "50",
            "--dirty",
            "0",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    summary = result.stdout.strip().splitlines()[-1]
    sent = int(summary.split("sent=")[1].split()[0])
    assert 300 <= sent <= 1300  # about 3 s at 400/s, unless the generator ran out first
    assert f"delivered={sent} failed=0" in summary
    records = consume_all(kafka.address, topic, 2)
    assert len(records) == sent
    for partition in (0, 1):  # in event-time order within each partition
        times = [json.loads(m.value())["ts"] for m in records if m.partition() == partition]
        assert times == sorted(times)


def test_step_times_add_up_repeated_steps_and_time_a_failing_one():
    steps = StepTimes()
    with steps("sessions"):
        time.sleep(0.05)
    with steps("sessions"):
        time.sleep(0.05)
    with pytest.raises(ValueError), steps("metrics"):
        time.sleep(0.02)
        raise ValueError("store down")
    # Sleeps never end early; the upper bounds only catch a timer that does not reset.
    assert 0.1 <= steps.seconds["sessions"] < 5
    assert 0.02 <= steps.seconds["metrics"] < 5
    assert list(steps.seconds) == ["sessions", "metrics"]
    assert steps.elapsed() >= steps.seconds["sessions"] + steps.seconds["metrics"]
    assert str(steps) == " ".join(f"{k}={v:.1f}s" for k, v in steps.seconds.items())


def test_a_batch_republishes_the_hour_before_only_while_it_can_continue_its_visits():
    """A visit of hour H - 1 ends before H; a beacon more than 35 minutes after its last one
    starts a new visit. So from H + 35 minutes on, a batch cannot change H - 1's bounces."""
    hour = START + timedelta(hours=1)
    last_of_before = hour_start_ms(hour) - 1  # the latest a visit of H - 1 can have been seen
    gap = 35 * 60_000
    assert continues_visits_before(hour, last_of_before + gap)  # exactly the gap: goes on
    assert continues_visits_before(hour, hour_start_ms(hour) + gap - 1)
    assert not continues_visits_before(hour, hour_start_ms(hour) + gap)
