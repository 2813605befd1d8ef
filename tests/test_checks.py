"""The batch checks' rules, their failure paths included."""

from __future__ import annotations

from expo_platform.core.checks import (
    metrics_by_key,
    reject_rate,
    rejected_by_reason,
    sanity_violations,
)
from expo_platform.serving.store import Point

HOUR = "2026-03-02T05:00:00Z"
GOOD = {
    "visits": 10.0,
    "bounces": 4.0,
    "visitors": 8.0,
    "visitors_24h": 30.0,
    "page_views": 20.0,
    "page_load_ms_count": 18.0,
}


def test_metrics_that_hold_together_pass():
    points = [Point(m, "exp", "A", "assigned", HOUR, "batch", v) for m, v in GOOD.items()]
    assert sanity_violations(metrics_by_key(points)) == []


def test_each_broken_relation_is_named_with_its_key():
    broken = {
        ("exp", "A", "assigned"): {**GOOD, "bounces": 11.0},
        ("exp", "B", "assigned"): {**GOOD, "visitors_24h": 7.0},
        ("exp", "B", "qualified"): {**GOOD, "page_load_ms_count": 21.0},
        ("exp", "C", "assigned"): {**GOOD, "revenue": -0.5},
    }
    assert sanity_violations(broken) == [
        "exp/A/assigned: bounces <= visits",
        "exp/B/assigned: visitors <= visitors_24h",
        "exp/B/qualified: page_load_ms_count <= page_views",
        "exp/C/assigned: no negative value",
    ]


def test_reject_rate_counts_rejects_not_duplicates():
    counts = {
        "beacons_total": 200,
        "beacons_duplicate": 50,
        "beacons_rejected_malformed_json": 10,
        "beacons_rejected_bad_field": 20,
    }
    assert rejected_by_reason(counts)["malformed_json"] == 10
    assert rejected_by_reason(counts)["wrong_partition"] == 0
    assert reject_rate(counts) == 0.15
    assert reject_rate({"beacons_total": 0}) == 0.0  # an empty hour rejects nothing
