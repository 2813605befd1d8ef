"""The event hour of a beacon, in Python and in Spark: one rule, `floor(ts / 3,600,000)`."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from expo_platform.core import beacons as bc
from expo_platform.core.hours import (
    HOUR_MS,
    event_hour_col,
    event_hour_index,
    hour_key,
    hour_of_ms,
    hour_start_ms,
)

H = datetime(2026, 3, 2, 5, tzinfo=UTC)
# The last millisecond of an hour and the first of the next, at the epoch and in 2026.
BOUNDARIES = [1, 3_599_999, 3_600_000, hour_start_ms(H) - 1, hour_start_ms(H)]


def test_the_event_hour_of_a_boundary_timestamp():
    assert [hour_key(hour_of_ms(ts)) for ts in BOUNDARIES] == [
        "1970-01-01-00",
        "1970-01-01-00",
        "1970-01-01-01",
        "2026-03-02-04",
        "2026-03-02-05",
    ]


def test_spark_columns_agree_with_the_python_hour(spark):
    df = spark.createDataFrame([(ts,) for ts in BOUNDARIES], "ts bigint")
    rows = df.select("ts", event_hour_col("ts").alias("key"), event_hour_index("ts").alias("i"))
    for ts, key, index in rows.collect():
        assert key == hour_key(hour_of_ms(ts)), ts
        assert index * HOUR_MS == hour_start_ms(hour_of_ms(ts)), ts
    (row,) = df.where(df.ts == 3_600_000).select(event_hour_col(df.ts)).collect()
    assert row[0] == "1970-01-01-01"


@pytest.mark.parametrize(("offset", "reason"), [(-1, "wrong_partition"), (0, None)])
def test_the_landing_hour_check_uses_the_same_hour(spark, offset, reason):
    """A beacon 1 ms before its landing hour is in the wrong partition; at its start, not."""
    df = spark.createDataFrame([(hour_start_ms(H) + offset,)], "ts bigint")
    checked = bc.check_partition(
        df.selectExpr("ts", "CAST(NULL AS STRING) AS reason", "CAST(NULL AS STRING) AS detail"),
        hour_start_ms(H) // HOUR_MS,
    )
    assert checked.first()["reason"] == reason
