"""Parsing, validation and de-duplication of beacons: METRICS.md section 1, rule by rule."""

from __future__ import annotations

import json

from expo_platform.core import beacons as bc

HOUR_INDEX = 498_750  # 2026-11-24T06, any hour works
TS = HOUR_INDEX * 3_600_000 + 60_000


def beacon(**overrides) -> dict:
    """A valid page view; keyword arguments replace or (with None) null its fields."""
    base = {
        "event_id": "e-1",
        "visitor_id": "v-1",
        "session_id": "s-1",
        "ts": TS,
        "type": "page_view",
        "page": "/",
        "experiments": [{"id": "exp", "variant": "control", "qualified": True}],
        "perf": {"page_load_ms": 800},
    }
    base.update(overrides)
    return base


def without(field: str) -> dict:
    data = beacon()
    del data[field]
    return data


def classify(spark, lines: list[str]) -> list[dict]:
    df = spark.createDataFrame([(line,) for line in lines], "value string")
    return [r.asDict() for r in bc.classify_hour(df, HOUR_INDEX).collect()]


def reason_of(spark, line) -> str | None:
    text = line if isinstance(line, str) else json.dumps(line)
    (row,) = classify(spark, [text])
    return row["reason"]


ORDER = {"order_id": "o-1", "revenue": 42.5, "units": 2}

CASES = [
    # valid
    (beacon(), None),
    (beacon(experiments=None), None),
    (without("experiments"), None),
    (beacon(perf=None), None),
    (beacon(perf={}), None),
    (beacon(perf={"page_load_ms": None}), None),
    (beacon(type="order", order=ORDER), None),
    (beacon(type="order", order={"order_id": "o-1", "revenue": 0, "units": 0}), None),
    (beacon(type="page_view", order="ignored"), None),
    (beacon(experiments=[{"id": "e", "variant": "v"}]), None),
    (beacon(error={"code": 502}, type="error", extra={"kept": [1, 2]}), None),
    # 1. malformed_json
    ("{not json", "malformed_json"),
    ("[1, 2]", "malformed_json"),
    ('"a string"', "malformed_json"),
    ("42", "malformed_json"),
    ("null", "malformed_json"),
    ('{"event_id":"e","event_id":"f"}', "malformed_json"),  # a key twice
    # 2. missing_field
    (without("event_id"), "missing_field"),
    (beacon(visitor_id=None), "missing_field"),
    (beacon(session_id=""), "missing_field"),
    (without("ts"), "missing_field"),
    (beacon(ts=""), "missing_field"),
    (without("type"), "missing_field"),
    (beacon(type="order"), "missing_field"),
    (beacon(type="order", order=None), "missing_field"),
    # 3. bad_field
    (beacon(event_id=17), "bad_field"),
    (beacon(visitor_id=["v"]), "bad_field"),
    (beacon(ts=str(TS)), "bad_field"),
    (beacon(ts=TS + 0.5), "bad_field"),
    (
        f'{{"event_id":"e","visitor_id":"v","session_id":"s","ts":{TS}.0,"type":"error"}}',
        "bad_field",
    ),
    (beacon(ts=0), "bad_field"),
    (beacon(ts=-5), "bad_field"),
    (beacon(ts=10**30), "bad_field"),
    (beacon(type="click"), "bad_field"),
    (beacon(type=1), "bad_field"),
    (beacon(type="order", order={"order_id": "o", "revenue": -1, "units": 1}), "bad_field"),
    (beacon(type="order", order={"order_id": "o", "revenue": "1", "units": 1}), "bad_field"),
    (beacon(type="order", order={"order_id": "o", "revenue": 1, "units": 1.5}), "bad_field"),
    (beacon(type="order", order={"order_id": 5, "revenue": 1, "units": 1}), "bad_field"),
    (beacon(type="order", order={"revenue": 1, "units": 1}), "bad_field"),
    (beacon(type="order", order=[1]), "bad_field"),
    (beacon(type="order", order="o-1"), "bad_field"),
    (beacon(experiments={"id": "e"}), "bad_field"),
    (beacon(experiments=["e"]), "bad_field"),
    (beacon(experiments=[{"id": "e"}]), "bad_field"),
    (beacon(experiments=[{"id": "", "variant": "v"}]), "bad_field"),
    (beacon(experiments=[{"id": "e", "variant": "v", "qualified": "yes"}]), "bad_field"),
    (beacon(perf=5), "bad_field"),
    (beacon(perf={"page_load_ms": -1}), "bad_field"),
    (beacon(perf={"page_load_ms": 1.5}), "bad_field"),
    (beacon(perf={"page_load_ms": "5"}), "bad_field"),
    # 4. wrong_partition
    (beacon(ts=TS - 3_600_000), "wrong_partition"),
    (beacon(ts=(HOUR_INDEX + 1) * 3_600_000), "wrong_partition"),
]


def test_each_rule_in_one_job(spark):
    """Every case in one DataFrame, as in production; mismatches are listed together."""
    lines = [c if isinstance(c, str) else json.dumps(c) for c, _ in CASES]
    reasons = {r["raw"]: r["reason"] for r in classify(spark, lines)}
    wrong = []
    for line, (_, expected) in zip(lines, CASES, strict=True):
        # the valid cases share event_id e-1: one counts, the others are duplicates
        allowed = (expected,) if expected else (None, bc.DUPLICATE)
        if reasons[line] not in allowed:
            wrong.append(f"{line}: got {reasons[line]}, expected {expected}")
    assert not wrong, "\n".join(wrong)
    assert sum(1 for r in reasons.values() if r is None) == 1


def test_precedence_first_rule_wins(spark):
    # missing beats bad, wherever the fields are
    assert reason_of(spark, beacon(event_id=5, visitor_id=None)) == "missing_field"
    assert reason_of(spark, beacon(ts="soon", type=None)) == "missing_field"
    # bad beats wrong partition
    assert reason_of(spark, beacon(ts=TS - 3_600_000, type="click")) == "bad_field"


def test_detail_names_the_first_field(spark):
    (row,) = classify(spark, [json.dumps(beacon(ts="x", type=3))])
    assert (row["reason"], row["detail"]) == ("bad_field", "ts")
    (row,) = classify(spark, [json.dumps(without("session_id"))])
    assert (row["reason"], row["detail"]) == ("missing_field", "session_id")


def test_blank_lines_are_not_beacons(spark):
    df = spark.createDataFrame([("",), ("   ",), (json.dumps(beacon()),)], "value string")
    classified = bc.classify_hour(df, HOUR_INDEX)
    assert bc.quality_counts(bc.reason_counts(classified)) == {
        "beacons_total": 1,
        "beacons_valid": 1,
        "beacons_duplicate": 0,
        "beacons_rejected_malformed_json": 0,
        "beacons_rejected_missing_field": 0,
        "beacons_rejected_bad_field": 0,
        "beacons_rejected_wrong_partition": 0,
    }


def test_duplicates_first_by_ts_counts(spark):
    lines = [
        json.dumps(beacon(event_id="a", ts=TS + 5, page="/late")),
        json.dumps(beacon(event_id="a", ts=TS + 1, page="/early")),
        json.dumps(beacon(event_id="a", ts=TS + 1, page="/early")),
        json.dumps(beacon(event_id="b")),
        json.dumps(beacon(event_id="a", ts="bad")),
    ]
    rows = classify(spark, lines)
    counted = [r for r in rows if r["reason"] is None]
    assert sorted((r["event_id"], r["page"]) for r in counted) == [("a", "/early"), ("b", "/")]
    reasons = sorted(r["reason"] for r in rows if r["reason"])
    assert reasons == ["bad_field", "duplicate", "duplicate"]
    df = spark.createDataFrame([(line,) for line in lines], "value string")
    counts = bc.quality_counts(bc.reason_counts(bc.classify_hour(df, HOUR_INDEX)))
    assert counts["beacons_total"] == 5
    assert counts["beacons_valid"] == 2
    assert counts["beacons_duplicate"] == 2
    assert counts["beacons_rejected_bad_field"] == 1


def test_typed_columns(spark):
    line = json.dumps(
        beacon(
            type="order",
            order={"order_id": "o-9", "revenue": 10, "units": 3},
            experiments=[
                {"id": "a", "variant": "x", "qualified": True},
                {"id": "b", "variant": "y"},
                {"id": "a", "variant": "z", "qualified": False},
            ],
            error={"code": 502},
        )
    )
    (row,) = classify(spark, [line])
    assert row["reason"] is None
    assert (row["order_id"], row["revenue"], row["units"]) == ("o-9", 10.0, 3)
    assert row["page_load_ms"] == 800
    assert json.loads(row["error"]) == {"code": 502}
    # an experiment listed twice: the first entry counts
    assert [tuple(e) for e in row["experiments"]] == [("a", "x", True), ("b", "y", False)]


def test_order_fields_ignored_for_other_types(spark):
    (row,) = classify(spark, [json.dumps(beacon(order={"order_id": "o", "revenue": 1}))])
    assert row["reason"] is None
    assert row["order_id"] is None and row["revenue"] is None
