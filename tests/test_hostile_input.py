"""Hostile input through both layers: every line is counted or quarantined with a reason.

Hypothesis builds landing lines from beacons whose fields it replaces with anything JSON can
hold (and some things it cannot): wrong types at every field, integers beyond 64 bits, NaN
and Infinity, repeated keys, a byte-order mark, bytes that are not UTF-8, NUL bytes, half a
surrogate pair, nesting around Spark's 1,000-level limit, truncated lines and garbage. Each
example goes through

- the batch layer: a landing file with LF or CRLF line ends, read and classified as
  `expo batch` does (`lake.read_landing`, `beacons.classify_hour`);
- the speed layer: the same lines as Kafka message bytes, parsed and counted as a
  micro-batch does (`kafka_options.uniform`, `parse.parse_messages`, `counted.classify`);
- the oracle: `tests.test_generated_traffic.reference_reason`, plain Python.

All three must give every line the same status, and the counts must add up to the lines.
The 10 MB lines are a test of their own (hypothesis keeps its examples small).
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, event, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from pyspark.sql import functions as F

from expo_platform.core import beacons as bc
from expo_platform.core.hours import (
    END_OF_NAMED_HOURS_MS,
    HOUR_MS,
    hour_key,
    hour_start_ms,
    parse_hour,
)
from expo_platform.lake import landing_partition, read_landing
from expo_platform.serving.store import MetricStore
from expo_platform.speed import counted, kafka_options, parse
from expo_platform.speed.context import BatchContext
from expo_platform.speed.files import EVENT_HOUR, StreamFiles
from expo_platform.speed.step_times import StepTimes
from tests.test_generated_traffic import parse_line, reference_reason

HOUR = parse_hour("2026-03-02T05")
H0 = hour_start_ms(HOUR)
INDEX = H0 // HOUR_MS
PRODUCED = datetime(2026, 3, 2, 5, 30, tzinfo=UTC)
ELSEWHERE = "another event hour"  # the stream's counterpart of the batch's wrong_partition

# -- the lines ---------------------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=6),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)


def _nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


# Value texts no json.dumps writes: each is either not JSON or an edge of the rules.
RAW_VALUES = [
    b"NaN",
    b"Infinity",
    b"-Infinity",
    b"1e999",
    b"-1e999",
    b"1e308",
    str(2**63).encode(),
    str(2**63 - 1).encode(),
    str(-(2**63) - 1).encode(),
    str(10**40).encode(),
    b"17.0",
    b"-0",
    b'"\\ud800"',  # half a surrogate pair
    b'"\\u0000"',
    b'"a\x00b"',  # a raw NUL inside a string
    b'"\xff\xfe"',  # not UTF-8
    b'"v\xc3"',  # a truncated UTF-8 sequence
    b'"\xed\xa0\x80"',  # a surrogate encoded in UTF-8: not UTF-8
    b'"\xe2\x80\xa8"',  # U+2028, valid inside a string
    b'""',
    b"{}",
    b"[]",
    b'[{"id": "e", "variant": "a", "qualified": 1}]',
    b'[{"id": "e", "variant": "a", "qualified": null}]',
    b'{"order_id": "o", "revenue": 1e999, "units": 1}',
    b'{"order_id": "o", "revenue": 2.5, "units": ' + str(2**64).encode() + b"}",
    b'{"page_load_ms": ' + str(2**63).encode() + b"}",
    _nested(998),
    _nested(999),
    _nested(1000),
]

# Mostly within the hour; else the hours beside it, the last millisecond of the year 9999
# and the first after it (no event hour), and the largest 64-bit integer.
TIMES = st.one_of(
    st.integers(H0, H0 + HOUR_MS - 1),
    st.integers(H0, H0 + HOUR_MS - 1),
    st.sampled_from([H0 - 1, H0 + HOUR_MS, 253_402_300_799_999, 253_402_300_800_000, 2**63 - 1]),
)
FIELDS = ("event_id", "visitor_id", "session_id", "ts", "type", "page", "experiments",
          "order", "perf", "error")  # fmt: skip


@st.composite
def beacon_pairs(draw) -> list[tuple[str, bytes]]:
    """A beacon as (key, value text) pairs, valid before hypothesis breaks some fields."""
    kind = draw(st.sampled_from(bc.BEACON_TYPES))
    beacon = {
        "event_id": draw(st.sampled_from(["e1", "e2", "e3"])),  # repeats: duplicates
        "visitor_id": draw(st.sampled_from(["v1", "v2"])),
        "session_id": "s1",
        "ts": draw(TIMES),
        "type": kind,
        "page": "/p",
        "experiments": [{"id": "exp", "variant": draw(st.sampled_from(["control", "b"]))}],
    }
    if kind == "order":
        beacon["order"] = {"order_id": "o1", "revenue": 12.5, "units": 2}
    if draw(st.booleans()):
        beacon["perf"] = {"page_load_ms": draw(st.integers(0, 5000))}
    pairs = [(k, json.dumps(v).encode()) for k, v in beacon.items()]
    for _ in range(draw(st.integers(0, 3))):  # break fields: replace, drop, repeat, add
        key = draw(st.sampled_from(FIELDS))
        value = draw(st.one_of(json_values.map(lambda v: json.dumps(v).encode()),
                               st.sampled_from(RAW_VALUES)))  # fmt: skip
        action = draw(st.sampled_from(["replace", "drop", "repeat"]))
        others = [p for p in pairs if p[0] != key]
        if action == "replace":
            pairs = [*others, (key, value)]
        elif action == "drop":
            pairs = others
        else:  # a repeated key: malformed even with the same value
            pairs = [*pairs, (key, value)]
    if draw(st.booleans()):
        pairs = draw(st.permutations(pairs))
    return list(pairs)


def _text(pairs: list[tuple[str, bytes]], ensure_ascii: bool) -> bytes:
    items = [json.dumps(k, ensure_ascii=ensure_ascii).encode() + b": " + v for k, v in pairs]
    return b"{" + b", ".join(items) + b"}"


@st.composite
def lines(draw) -> bytes:
    """One landing line (no line end inside): a beacon, broken or not, or garbage."""
    shape = draw(st.sampled_from(["beacon", "beacon", "beacon", "mangled", "garbage", "space"]))
    if shape == "garbage":
        return draw(st.binary(min_size=1, max_size=30)).replace(b"\r", b"").replace(b"\n", b"")
    if shape == "space":  # blank (JSON whitespace) or not (a no-break space is text)
        return draw(st.sampled_from([b" \t ", b"\t", "\u00a0".encode(), b"\x0b", b"\x00"]))
    text = _text(draw(beacon_pairs()), draw(st.booleans()))
    if shape == "mangled":
        how = draw(st.sampled_from(["bom", "cut", "deep", "bytes", "array", "pad"]))
        if how == "bom":
            text = "\ufeff".encode() + text
        elif how == "cut":
            text = text[: draw(st.integers(0, len(text) - 1))]
        elif how == "deep":
            depth = draw(st.sampled_from([998, 999, 1000, 5000]))
            text = text[:-1] + b', "x": ' + _nested(depth) + b"}"
        elif how == "bytes":
            at = draw(st.integers(0, len(text)))
            text = (
                text[:at] + draw(st.sampled_from([b"\xff", b"\xc3", b"\x00", b"\xa0"])) + text[at:]
            )
        elif how == "array":
            text = b"[" + text + b"]"
        else:
            text = b" \t" + text + b"\t "
    return text


# -- the three readings ------------------------------------------------------------------------


def reference_statuses(values: list[bytes]) -> list[str | None]:
    """The oracle's status of each line: None for blank, else valid, duplicate or a reason."""
    out, seen = [], {}
    for i, raw in enumerate(values):
        if not raw.strip(b" \t\r\n"):
            out.append(None)
            continue
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            line = raw
        reason = reference_reason(line, INDEX)
        out.append(reason or "valid")
        if reason is None:  # the first by (ts, raw) counts
            beacon = parse_line(line)
            rank = (beacon["ts"], raw)
            j = seen.get(beacon["event_id"])
            if j is None or rank < j[0]:
                if j is not None:
                    out[j[1]] = "duplicate"
                seen[beacon["event_id"]] = (rank, i)
            else:
                out[i] = "duplicate"
    return out


def _in_stream(status: str, line: bytes) -> str:
    """The stream's status of a line the batch layer finds outside its landing hour."""
    if parse_line(line)["ts"] >= END_OF_NAMED_HOURS_MS:
        return "bad_field"  # no event hour: see `parse.parse_messages`
    return ELSEWHERE


def _status(row) -> str:
    return row["reason"] or "valid"


def batch_statuses(spark, settings, values: list[bytes], crlf: list[bool]) -> list[str | None]:
    """Each line's status in the batch layer, from a landing file of the hour."""
    folder = landing_partition(settings, HOUR)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "hostile.json"
    path.write_bytes(
        b"".join(v + (b"\r\n" if c else b"\n") for v, c in zip(values, crlf, strict=True))
    )
    read = read_landing(spark, [path]).withColumn("n", F.monotonically_increasing_id())
    rows = bc.classify_hour(read, INDEX).select("n", "reason").collect()
    by_line = {r["n"]: _status(r) for r in rows}
    # The file's lines are read in order, one partition; blank ones are not classified.
    numbers = iter(sorted(r["n"] for r in read.select("n").collect()))
    return [by_line.get(next(numbers)) for _ in values]


def speed_statuses(spark, settings, store, values: list[bytes]) -> list[str | None]:
    """Each message's status in the speed layer: parsed and counted as one micro-batch."""
    rows = [(None, v, "beacons", 0, i, PRODUCED) for i, v in enumerate(values)]
    df = spark.createDataFrame(rows, kafka_options.SCHEMA)
    parsed = parse.parse_messages(kafka_options.uniform(df)).cache()
    ctx = BatchContext(spark, settings, StreamFiles(settings), store, StepTimes(), "0000-00000001")
    batch = counted.classify(ctx, parse.beacons(parsed), None)
    kept = {r["offset"] for r in batch.counted.select("offset").collect()}
    statuses = {}
    for r in batch.classified.select("offset", "reason", EVENT_HOUR).collect():
        status = _status(r)
        if status == "valid" and r["offset"] not in kept:
            status = "duplicate"
        # The stream has no landing hour: a beacon of another event hour counts there.
        if status in ("valid", "duplicate") and r[EVENT_HOUR] != hour_key(HOUR):
            status = ELSEWHERE
        statuses[r["offset"]] = status
    parsed.unpersist()
    return [statuses.get(i) for i in range(len(values))]


@pytest.fixture
def store(settings):
    with MetricStore(settings.lake.metric_store) as store:
        yield store


@hypothesis_settings(
    max_examples=60,
    deadline=None,
    derandomize=True,  # the same examples in every run: CI reproduces a failure
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                           HealthCheck.data_too_large],
)  # fmt: skip
@given(data=st.lists(st.tuples(lines(), st.booleans()), min_size=1, max_size=25))
def test_every_hostile_line_gets_the_same_status_in_both_layers_and_the_oracle(
    spark, settings, store, data
):
    values = [v for v, _ in data]
    expected = reference_statuses(values)
    batch = batch_statuses(spark, settings, values, [c for _, c in data])
    speed = speed_statuses(spark, settings, store, values)
    assert batch == expected, list(zip(values, batch, expected, strict=True))
    in_stream = [
        _in_stream(s, v) if s == "wrong_partition" else s
        for s, v in zip(expected, values, strict=True)
    ]
    assert speed == in_stream, list(zip(values, speed, in_stream, strict=True))
    counts = Counter(s for s in expected if s)
    assert sum(counts.values()) == sum(1 for v in values if v.strip(b" \t\r\n"))
    for status in counts:
        event(status)  # `pytest --hypothesis-show-statistics` shows how often each was drawn


def test_ten_megabyte_lines_count_in_both_layers(spark, settings, store):
    page = "x" * 10_000_000
    good = {"event_id": "big", "visitor_id": "v", "session_id": "s", "ts": H0 + 5}
    valid = json.dumps(good | {"type": "page_view", "page": page}).encode()
    wrong = json.dumps(good | {"event_id": "big2", "type": 10**6 * [1]}).encode()  # 3 MB
    garbage = b"{" + b"\xff" * 10_000_000
    values = [valid, wrong, garbage, valid]
    expected = ["valid", "bad_field", "malformed_json", "duplicate"]
    assert batch_statuses(spark, settings, values, [True] * 4) == expected
    assert speed_statuses(spark, settings, store, values) == expected
