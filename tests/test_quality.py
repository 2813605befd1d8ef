"""Data-quality counts (METRICS.md, Data quality): one function that both layers feed with
their lines counted per reason."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from expo_platform import lake
from expo_platform.core import beacons as bc
from expo_platform.serving.store import Point, quality_points
from expo_platform.speed import quality
from expo_platform.speed.quality import STREAM_QUALITY

HOUR_KEY = "2026-03-02-05"
HOUR_ISO = "2026-03-02T05:00:00Z"


def test_counts_per_reason_give_every_quality_metric():
    counts = bc.quality_counts({None: 5, "duplicate": 2, "bad_field": 1, "wrong_partition": 3})
    assert counts == {
        "beacons_total": 11,
        "beacons_valid": 5,
        "beacons_duplicate": 2,
        "beacons_rejected_malformed_json": 0,
        "beacons_rejected_missing_field": 0,
        "beacons_rejected_bad_field": 1,
        "beacons_rejected_wrong_partition": 3,
    }
    assert tuple(counts) == bc.QUALITY_METRICS
    assert bc.quality_counts({}) == dict.fromkeys(bc.QUALITY_METRICS, 0)


def test_the_speed_layer_counts_late_beacons_and_has_no_wrong_partition():
    assert STREAM_QUALITY == (
        "beacons_total",
        "beacons_valid",
        "beacons_duplicate",
        "beacons_late",
        "beacons_rejected_malformed_json",
        "beacons_rejected_missing_field",
        "beacons_rejected_bad_field",
    )
    counts = bc.quality_counts({None: 4, bc.LATE: 2, "missing_field": 1}, STREAM_QUALITY)
    assert counts == {
        "beacons_total": 7,
        "beacons_valid": 4,
        "beacons_duplicate": 0,
        "beacons_late": 2,
        "beacons_rejected_malformed_json": 0,
        "beacons_rejected_missing_field": 1,
        "beacons_rejected_bad_field": 0,
    }


def test_a_reason_without_a_metric_is_an_error():
    with pytest.raises(ValueError, match="'late'"):
        bc.quality_counts({bc.LATE: 1})  # the batch layer has no late beacons
    with pytest.raises(ValueError, match="'wrong_partition'"):
        bc.quality_counts({"wrong_partition": 1}, STREAM_QUALITY)


def test_quality_points_have_no_experiment_key():
    points = quality_points(
        {"beacons_total": 3, "beacons_valid": 3}, STREAM_QUALITY, HOUR_ISO, "speed"
    )
    assert [p.metric for p in points] == list(STREAM_QUALITY)
    assert points[0] == Point("beacons_total", "", "", "", HOUR_ISO, "speed", 3.0)
    assert {p.value for p in points[2:]} == {0.0}  # a metric without a count is 0


def test_the_batch_layer_counts_classified_lines_by_reason(spark):
    rows = [(None,), (None,), ("duplicate",), ("bad_field",)]
    classified = spark.createDataFrame(rows, "reason string")
    assert bc.reason_counts(classified) == {None: 2, "duplicate": 1, "bad_field": 1}


def test_the_speed_layer_counts_a_batch_per_hour(spark, tmp_path):
    """On-time beacons not in the batch's counted folder are duplicates; messages without an
    event time count under the hour ""."""
    rows = [
        (HOUR_KEY, None),  # on time: 3, of which 2 counted
        (HOUR_KEY, None),
        (HOUR_KEY, None),
        (HOUR_KEY, bc.LATE),
        (HOUR_KEY, "bad_field"),
        (None, "missing_field"),  # no event time
    ]
    classified = spark.createDataFrame(rows, "hourly_partitioner string, reason string")
    folder = tmp_path / "batch=0000-00000001" / f"hourly_partitioner={HOUR_KEY}"
    folder.mkdir(parents=True)
    pq.write_table(pa.table({"event_id": ["a", "b"]}), folder / "part-0.parquet")
    counts = quality.batch_counts(classified, lake.parquet_rows_by_partition(folder.parent))
    assert counts == {
        HOUR_KEY: {
            "beacons_total": 5,
            "beacons_valid": 2,
            "beacons_duplicate": 1,
            "beacons_late": 1,
            "beacons_rejected_malformed_json": 0,
            "beacons_rejected_missing_field": 0,
            "beacons_rejected_bad_field": 1,
        },
        "": {
            **dict.fromkeys(STREAM_QUALITY, 0),
            "beacons_total": 1,
            "beacons_rejected_missing_field": 1,
        },
    }
