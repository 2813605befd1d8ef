"""Trap traffic: valid beacons at the edge of every METRICS.md rule, and nothing when off.

Trap lines are found as the lines that traffic without traps does not have, so these tests
use only the public generator API. Plain Python, no Spark.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections import defaultdict
from itertools import pairwise

import pytest

from expo_platform.cli import build_parser
from expo_platform.core.hours import HOUR_MS, hour_start_ms, parse_hour
from expo_platform.devtools.generator import GeneratorConfig, iter_lines, write_landing
from expo_platform.devtools.trap_sessions import TRAP_KINDS
from expo_platform.errors import ExpoError
from tests.test_generated_traffic import reference_reason

START = parse_hour("2026-03-02T00")
CONFIG = GeneratorConfig(start=START, hours=24, visitors=300, seed=7, trap_fraction=0.1)
GAP_MS = 2_100_000
SPAN_MS = 43_200_000
# iter_lines of PINNED as generated before traps existed: benchmarks cache generated files.
PINNED = GeneratorConfig(start=START, hours=3, visitors=200, seed=11, dirty_fraction=0.03)
PINNED_SHA256 = "120d9d00db430915985c08d8f05e5991f14a789b595ee61426d6e304fa6b2213"


def hour_index(key: str) -> int:
    return hour_start_ms(parse_hour(key)) // HOUR_MS


@pytest.fixture(scope="module")
def lines() -> list[tuple[str, str, str]]:
    return list(iter_lines(CONFIG))


@pytest.fixture(scope="module")
def traps(lines) -> list[tuple[int, str, str, dict]]:
    """(position in iter_lines order, hour key, kind, beacon) of the trap lines."""
    plain = {line for _, line, _ in iter_lines(dataclasses.replace(CONFIG, trap_fraction=0.0))}
    return [
        (position, key, kind, json.loads(line))
        for position, (key, line, kind) in enumerate(lines)
        if line not in plain
    ]


@pytest.fixture(scope="module")
def sessions(traps) -> dict[str, list[dict]]:
    """The counted trap beacons per session, ordered by (ts, event_id)."""
    out = defaultdict(list)
    for _, _, kind, beacon in traps:
        if kind == "clean":
            out[beacon["session_id"]].append(beacon)
    return {s: sorted(bs, key=lambda b: (b["ts"], b["event_id"])) for s, bs in out.items()}


def visits(beacons: list[dict]) -> list[list[dict]]:
    """A session's visits by METRICS.md section 2 (beacons already in (ts, event_id) order)."""
    out: list[list[dict]] = []
    for beacon in beacons:
        if (
            out
            and beacon["ts"] - out[-1][-1]["ts"] <= GAP_MS
            and beacon["ts"] - out[-1][0]["ts"] < SPAN_MS
        ):
            out[-1].append(beacon)
        else:
            out.append([beacon])
    return out


def first_entry(beacon: dict, experiment: str) -> dict | None:
    return next((e for e in beacon["experiments"] if e["id"] == experiment), None)


def test_no_traps_is_the_traffic_as_before():
    unset = GeneratorConfig(start=START, hours=24, visitors=300, seed=7, dirty_fraction=0.02)
    zero = dataclasses.replace(unset, trap_fraction=0.0)
    assert list(iter_lines(zero)) == list(iter_lines(unset))
    digest = hashlib.sha256()
    for key, line, kind in iter_lines(PINNED):
        digest.update(f"{key} {kind} {line}\n".encode())
    assert digest.hexdigest() == PINNED_SHA256


def test_traps_add_sessions_and_change_nothing_else(lines, traps):
    plain = list(iter_lines(dataclasses.replace(CONFIG, trap_fraction=0.0)))
    trap_positions = {position for position, *_ in traps}
    assert [x for i, x in enumerate(lines) if i not in trap_positions] == plain
    visitors = {beacon["visitor_id"] for *_, beacon in traps}
    assert len(visitors) == round(CONFIG.trap_fraction * CONFIG.visitors)
    plain_sessions = {json.loads(line)["session_id"] for _, line, _ in plain}
    assert not plain_sessions & {beacon["session_id"] for *_, beacon in traps}


def test_every_kind_is_reported_and_counted_as_valid(tmp_path, traps):
    report = write_landing(CONFIG, tmp_path)
    assert set(report.traps) == set(TRAP_KINDS)
    assert sum(report.traps.values()) == len(traps)
    plain = write_landing(dataclasses.replace(CONFIG, trap_fraction=0.0), tmp_path / "plain")
    assert plain.traps == {}
    assert report.clean - plain.clean == sum(1 for *_, kind, _ in traps if kind == "clean")
    assert report.duplicates - plain.duplicates == sum(1 for t in traps if t[2] == "duplicate")
    assert report.duplicates > plain.duplicates


def test_every_kind_occurs_for_a_few_visitors(tmp_path):
    tiny = GeneratorConfig(start=START, hours=24, visitors=3, seed=5, trap_fraction=0.01)
    assert set(write_landing(tiny, tmp_path).traps) == set(TRAP_KINDS)


def test_every_line_is_valid_in_its_landing_hour(lines, traps):
    for key, line, kind in lines:
        if kind in ("clean", "duplicate"):
            assert reference_reason(line, hour_index(key)) is None, line
    start = hour_start_ms(CONFIG.start)
    end = start + CONFIG.hours * HOUR_MS
    assert all(start <= beacon["ts"] < end for *_, beacon in traps)
    counted = [json.loads(line)["event_id"] for _, line, kind in lines if kind == "clean"]
    assert len(counted) == len(set(counted)), "event_ids are unique but for re-sends"
    clean = {line for _, line, kind in lines if kind == "clean"}
    assert all(json.dumps(b, separators=(",", ":")) in clean for *_, k, b in traps if k != "clean")


def test_long_visit_edges(sessions):
    gaps = [(a, b) for bs in sessions.values() for a, b in pairwise(bs)]
    crossing = lambda a, b: a["ts"] // HOUR_MS != b["ts"] // HOUR_MS  # noqa: E731
    assert any(b["ts"] - a["ts"] == GAP_MS and crossing(a, b) for a, b in gaps)
    assert any(b["ts"] - a["ts"] == GAP_MS + 1 and crossing(a, b) for a, b in gaps)
    all_visits = [v for bs in sessions.values() for v in visits(bs)]
    hours = lambda v: v[-1]["ts"] // HOUR_MS - v[0]["ts"] // HOUR_MS + 1  # noqa: E731
    longest_gap = lambda v: max(b["ts"] - a["ts"] for a, b in pairwise(v))  # noqa: E731
    assert any(3 <= hours(v) <= 5 and longest_gap(v) == GAP_MS for v in all_visits)
    late_in_hour = lambda b: HOUR_MS - b["ts"] % HOUR_MS <= 5 * 60_000  # noqa: E731
    # A page view at :55-:59 alone in its hour, continued in the next hour: not a bounce ...
    assert any(late_in_hour(v[0]) and len(v) > 1 and crossing(v[0], v[1]) for v in all_visits)
    # ... and one that stays alone: a bounce, known only from the next hour's beacons.
    bounces = [v[0] for v in all_visits if len(v) == 1 and v[0]["type"] == "page_view"]
    assert any(late_in_hour(b) for b in bounces)


def test_late_duplicate_arrives_hours_later_in_its_event_hour(lines, traps):
    first_seen = {}
    for position, (_, line, _) in enumerate(lines):
        first_seen.setdefault(line, position)
    late = []
    for position, key, kind, beacon in traps:
        if kind != "duplicate":
            continue
        assert hour_index(key) == beacon["ts"] // HOUR_MS
        line = json.dumps(beacon, separators=(",", ":"))
        assert first_seen[line] < position
        later_before = [k for k, _, _ in lines[first_seen[line] : position] if k > key]
        if later_before:
            late.append(beacon)
    assert late and any(b["type"] == "order" for b in late)


def test_out_of_order_in_the_stream_and_in_the_landing_file(tmp_path, traps):
    latest: dict[str, int] = {}
    straggler = False
    for _, key, kind, beacon in traps:
        hour = beacon["ts"] // HOUR_MS
        if kind == "clean" and latest.get(beacon["session_id"], hour) > hour:
            straggler = straggler or hour_index(key) == hour
        latest[beacon["session_id"]] = max(latest.get(beacon["session_id"], hour), hour)
    assert straggler, "a beacon sent after its session's next-hour beacons, keyed by its ts"
    report = write_landing(CONFIG, tmp_path)
    trap_lines = {json.dumps(beacon, separators=(",", ":")) for *_, beacon in traps}
    unordered = 0
    for path in report.files:
        written = [line for line in path.read_text().splitlines() if line in trap_lines]
        stamps = [json.loads(line)["ts"] for line in written]
        unordered += any(b < a for a, b in pairwise(stamps))
    assert unordered > 0


def test_qualification_flips_within_a_visit(sessions):
    def flips(visit: list[dict], experiment: str) -> bool:
        flags = [e.get("qualified", False) for b in visit if (e := first_entry(b, experiment))]
        on = flags.index(True) if True in flags else len(flags)
        off = flags.index(False, on) if False in flags[on:] else len(flags)
        return True in flags[off:]

    all_visits = [v for bs in sessions.values() for v in visits(bs)]
    assert any(flips(v, spec.id) for v in all_visits for spec in CONFIG.experiments)


def test_multi_variant_visitor(sessions):
    by_visitor = defaultdict(lambda: defaultdict(set))
    within_visit = False
    for session, beacons in sessions.items():
        for visit in visits(beacons):
            seen = defaultdict(set)
            for beacon in visit:
                for e in beacon["experiments"]:
                    if e is first_entry(beacon, e["id"]):
                        seen[e["id"]].add(e["variant"])
                        by_visitor[beacon["visitor_id"]][e["id"]].add((session, e["variant"]))
            within_visit = within_visit or any(len(v) > 1 for v in seen.values())
    assert within_visit
    assert any(
        len({s for s, _ in pairs}) > 1 and len({v for _, v in pairs}) > 1
        for experiments in by_visitor.values()
        for pairs in experiments.values()
    )


def test_robot_session_is_cut_at_twelve_hours(sessions):
    robots = [
        bs
        for bs in sessions.values()
        if bs[-1]["ts"] - bs[0]["ts"] > SPAN_MS
        and all(b["ts"] - a["ts"] <= 30 * 60_000 for a, b in pairwise(bs))
    ]
    assert robots
    for beacons in robots:
        assert len(visits(beacons)) == 2
        assert {"page_view", "order"} <= {b["type"] for b in beacons}


def test_experiment_listed_twice(traps):
    twice = []
    for *_, beacon in traps:
        ids = [e["id"] for e in beacon["experiments"]]
        for experiment in {i for i in ids if ids.count(i) > 1}:
            entries = [e for e in beacon["experiments"] if e["id"] == experiment]
            twice.append(entries)
    assert twice
    assert any(a["variant"] != b["variant"] for a, b in twice)
    assert any(a.get("qualified", False) != b.get("qualified", False) for a, b in twice)
    assert any("qualified" not in a for a, _ in twice), "qualified defaults to false"


def test_same_ts_and_orders_again(sessions):
    assert any(a["ts"] == b["ts"] for bs in sessions.values() for a, b in pairwise(bs))
    again = False
    for beacons in sessions.values():
        per_visit = [
            [b["order"]["order_id"] for b in visit if b["type"] == "order"]
            for visit in visits(beacons)
        ]
        for i, orders in enumerate(per_visit):
            reloaded = {o for o in orders if orders.count(o) > 1}
            again = again or any(o in later for o in reloaded for later in per_visit[i + 1 :])
    assert again, "an order reloaded in a visit and shown again in a later one"


def test_same_config_same_lines():
    assert list(iter_lines(CONFIG)) == list(iter_lines(CONFIG))
    assert list(iter_lines(CONFIG)) != list(iter_lines(dataclasses.replace(CONFIG, seed=8)))


@pytest.mark.parametrize("share", [-0.1, 1.5, float("nan")])
def test_invalid_trap_fraction(share):
    with pytest.raises(ExpoError, match="trap fraction"):
        list(iter_lines(dataclasses.replace(CONFIG, trap_fraction=share)))


def test_cli_flag():
    parser = build_parser()
    assert parser.parse_args(["generate"]).traps == 0.0
    assert parser.parse_args(["generate", "--traps", "0.2"]).traps == 0.2
