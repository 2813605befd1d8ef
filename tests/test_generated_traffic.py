"""The generator: deterministic, realistic, and every dirty line dirty for its counted reason.

`reference_reason` is an independent, plain-Python reading of METRICS.md section 1; it checks
the generator, and the Spark validation is checked against both on the same files.
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections import Counter, defaultdict
from datetime import timedelta
from itertools import islice, pairwise

import pytest

from expo_platform.core import beacons as bc
from expo_platform.core.hours import HOUR_MS, hour_start_ms, parse_hour
from expo_platform.devtools.generator import GeneratorConfig, iter_lines, write_landing
from expo_platform.devtools.traffic_model import DEFAULT_EXPERIMENTS, Effect, ExperimentSpec
from expo_platform.errors import ExpoError

START = parse_hour("2026-03-02T00")
TYPES = {"page_view", "add_to_cart", "order", "error"}


INT64 = (-(2**63), 2**63 - 1)
MAX_DEPTH = 1000  # the deepest nesting a line may have (Spark's JSON parser's limit)
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')


def _is_int(value) -> bool:
    """A JSON integer that fits in 64 bits."""
    return isinstance(value, int) and not isinstance(value, bool) and INT64[0] <= value <= INT64[1]


def _is_type(value) -> bool:
    return isinstance(value, str) and value in TYPES


def _finite_number(value) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:  # an integer beyond the doubles
        return False


def _unique_keys(pairs: list) -> dict:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError("a repeated key")
    return dict(pairs)


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def _depth(text: str) -> int:
    """The deepest nesting of objects and arrays in JSON text (strings left out)."""
    depth = deepest = 0
    for ch in _STRING.sub("", text):
        if ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def _whole_unicode(value) -> bool:
    """No half surrogate pair in any key or string (`"\\ud800"` escapes one)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            items = [item]
        elif isinstance(item, dict):
            items = list(item)
            stack.extend(item.values())
        else:
            stack.extend(item if isinstance(item, list) else [])
            continue
        for text in items:
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                return False
    return True


def parse_line(line: str | bytes):
    """The JSON value of a line by the project's reading of RFC 8259, or ValueError."""
    if isinstance(line, bytes):
        line = line.decode("utf-8")  # UnicodeDecodeError is a ValueError
    line = line.removeprefix("\ufeff")  # a byte-order mark before the text is ignored
    if _depth(line) > MAX_DEPTH:
        raise ValueError("nested too deeply")
    # json's parser recurses once per level: room for MAX_DEPTH levels and the callers.
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 3 * MAX_DEPTH))
    try:
        data = json.loads(line, object_pairs_hook=_unique_keys, parse_constant=_no_constant)
    finally:
        sys.setrecursionlimit(limit)
    if not _whole_unicode(data):
        raise ValueError("half a surrogate pair")
    return data


def reference_reason(line: str | bytes, hour_index: int) -> str | None:
    """The rejection reason of a line by METRICS.md section 1, or None when valid.

    `line` is bytes when it is not valid UTF-8 (then it is malformed).
    """
    try:
        data = parse_line(line)
    except ValueError:
        return "malformed_json"
    if not isinstance(data, dict):
        return "malformed_json"
    required = ["event_id", "visitor_id", "session_id", "ts", "type"]
    if data.get("type") == "order":
        required.append("order")
    if any(data.get(name) in (None, "") for name in required):
        return "missing_field"
    if not all(isinstance(data[n], str) for n in ("event_id", "visitor_id", "session_id")):
        return "bad_field"
    if not _is_int(data["ts"]) or data["ts"] <= 0 or not _is_type(data["type"]):
        return "bad_field"
    if data["type"] == "order":
        order = data["order"]
        if not (
            isinstance(order, dict)
            and isinstance(order.get("order_id"), str)
            and order["order_id"]
            and _finite_number(order.get("revenue"))
            and order["revenue"] >= 0
            and _is_int(order.get("units"))
            and order["units"] >= 0
        ):
            return "bad_field"
    experiments = data.get("experiments")
    if experiments is not None:
        if not isinstance(experiments, list):
            return "bad_field"
        for entry in experiments:
            ok = (
                isinstance(entry, dict)
                and isinstance(entry.get("id"), str)
                and entry["id"]
                and isinstance(entry.get("variant"), str)
                and entry["variant"]
                and (entry.get("qualified") is None or isinstance(entry["qualified"], bool))
            )
            if not ok:
                return "bad_field"
    perf = data.get("perf")
    if perf is not None:
        load = perf.get("page_load_ms") if isinstance(perf, dict) else "bad"
        if load is not None and not (_is_int(load) and load >= 0):
            return "bad_field"
    if data["ts"] // HOUR_MS != hour_index:
        return "wrong_partition"
    return None


def small(**overrides) -> GeneratorConfig:
    return GeneratorConfig(
        **{
            "start": START,
            "hours": 3,
            "visitors": 400,
            "seed": 11,
            "dirty_fraction": 0.03,
            **overrides,
        }
    )


def test_same_seed_same_files_other_seed_differs(tmp_path):
    a = write_landing(small(), tmp_path / "a")
    b = write_landing(small(), tmp_path / "b")
    c = write_landing(small(seed=12), tmp_path / "c")
    read = lambda report: [p.read_bytes() for p in report.files]  # noqa: E731
    assert read(a) == read(b)
    assert read(a) != read(c)
    again = write_landing(small(), tmp_path / "a")  # re-running rewrites the same files
    assert [p.name for p in again.files] == [p.name for p in a.files] and read(again) == read(a)


def test_every_line_is_what_it_is_counted_as(tmp_path):
    report = write_landing(small(), tmp_path)
    seen = Counter()
    for path in report.files:
        hour_index = hour_start_ms(parse_hour(path.parent.name.removeprefix("hour="))) // HOUR_MS
        for line in path.read_text().splitlines():
            if line.strip():
                seen[reference_reason(line, hour_index) or "valid"] += 1
    assert seen["valid"] == report.clean + report.duplicates
    for reason, count in report.rejects.items():
        assert seen[reason] == count > 0, reason
    assert report.duplicates > 0
    assert sum(report.lines_by_hour.values()) == sum(seen.values())


def test_spark_validation_agrees_with_the_report(tmp_path, spark):
    """Per hour, the Spark data-quality counts equal what the generator wrote."""
    report = write_landing(small(visitors=600), tmp_path)
    for path in report.files:
        key = path.parent.name.removeprefix("hour=")
        hour_index = hour_start_ms(parse_hour(key)) // HOUR_MS
        counts = bc.quality_counts(
            bc.reason_counts(bc.classify_hour(spark.read.text(str(path)), hour_index))
        )
        kinds = report.kinds_by_hour[key]
        assert counts == {
            "beacons_total": report.lines_by_hour[key],
            "beacons_valid": kinds["clean"],
            "beacons_duplicate": kinds["duplicate"],
            **{f"beacons_rejected_{r}": kinds[r] for r in bc.REJECT_REASONS},
        }, key


def test_traffic_is_realistic():
    clean = [json.loads(line) for _, line, kind in iter_lines(small(dirty_fraction=0.0))]
    by_session = defaultdict(list)
    for beacon in clean:
        by_session[beacon["session_id"]].append(beacon["ts"])
    pairs = [(a, b) for ts in by_session.values() for a, b in pairwise(sorted(ts))]
    assert any(b - a > 35 * 60_000 for a, b in pairs), "sessions with several visits"
    crossing = sum(1 for a, b in pairs if b - a <= 35 * 60_000 and a // HOUR_MS != b // HOUR_MS)
    assert crossing > 0, "visits crossing an hour boundary"
    variants = defaultdict(set)
    qualified = set()
    for beacon in clean:
        for e in beacon["experiments"]:
            variants[e["id"]].add(e["variant"])
            qualified.add(e["qualified"])
    assert {len(v) for v in variants.values()} == {2, 3}
    assert qualified == {True, False}
    types = Counter(b["type"] for b in clean)
    assert set(types) == {"page_view", "add_to_cart", "order", "error"}
    orders = Counter(
        (b["session_id"], b["order"]["order_id"]) for b in clean if b["type"] == "order"
    )
    assert max(orders.values()) == 2, "a reloaded order page repeats its order_id"
    assert any("perf" in b for b in clean) and all(
        b["ts"] < hour_start_ms(START + timedelta(hours=3)) for b in clean
    )


def test_true_effect_shows_and_aa_does_not():
    strong = tuple(
        ExperimentSpec(
            s.id,
            s.variants,
            s.qualify_pages,
            {"treatment": Effect(order_rate=1.6)} if s.id == "checkout-button" else s.effects,
            enrolment=s.enrolment,
        )
        for s in DEFAULT_EXPERIMENTS
    )
    config = GeneratorConfig(start=START, hours=24, visitors=6000, seed=3, experiments=strong)
    orders, visitors = Counter(), defaultdict(set)
    for _, line, _ in iter_lines(config):
        beacon = json.loads(line)
        for e in beacon["experiments"]:
            visitors[(e["id"], e["variant"])].add(beacon["visitor_id"])
            if beacon["type"] == "order":
                orders[(e["id"], e["variant"])] += 1
    rate = {k: orders[k] / len(v) for k, v in visitors.items()}
    lift = rate[("checkout-button", "treatment")] / rate[("checkout-button", "control")]
    aa = rate[("aa-check", "control-b")] / rate[("aa-check", "control")]
    assert lift > 1.3
    assert 0.85 < aa < 1.15


@pytest.mark.parametrize(
    "overrides",
    [
        {"hours": 0},
        {"visitors": 0},
        {"dirty_fraction": 0.9},
        {"start": START + timedelta(minutes=5)},
    ],
)
def test_invalid_config(overrides):
    with pytest.raises(ExpoError):
        list(iter_lines(small(**overrides)))


def test_live_lines_follow_the_clock_at_a_steady_rate():
    """Live traffic: arrival order from the start on, about the rate, valid, real visits."""
    from expo_platform.devtools.live_traffic import live_lines

    start = hour_start_ms(parse_hour("2026-03-02T10")) + 17 * 60_000
    rate = 5
    lines = list(
        islice(live_lines(GeneratorConfig(START, dirty_fraction=0.02), rate, start), 40_000)
    )
    arrivals = [arrival for arrival, _, _ in lines]
    assert arrivals[0] >= start and arrivals == sorted(arrivals)
    second_hour = sum(1 for a in arrivals if start + HOUR_MS <= a < start + 2 * HOUR_MS)
    assert second_hour == pytest.approx(rate * 3600, rel=0.15)
    variants = defaultdict(set)
    hours_of_session = defaultdict(set)
    for arrival, line, kind in lines:
        if kind != "clean":
            continue
        beacon = json.loads(line)
        assert beacon["ts"] == arrival  # a clean beacon is sent at its own time
        assert reference_reason(line, arrival // HOUR_MS) is None
        hours_of_session[beacon["session_id"]].add(arrival // HOUR_MS)
        for entry in beacon["experiments"]:
            variants[(beacon["visitor_id"], entry["id"])].add(entry["variant"])
    # Each piece of arrivals has visitors of its own: nobody is in two variants.
    assert all(len(v) == 1 for v in variants.values())
    assert any(len(hours) > 1 for hours in hours_of_session.values())  # visits cross hours
