"""The benchmark's correctness side: the independent DuckDB implementation of the metrics
agrees with the batch layer on a generated hour with dirty lines, and the table says which
targets are met."""

from __future__ import annotations

import pytest

from bench import duckdb_peer
from bench.__main__ import table
from bench.batch import HOUR, SparkRun, cached_input, compare, run_spark
from expo_platform.core.hours import HOUR_MS, hour_start_ms


@pytest.mark.slow
def test_duckdb_peer_agrees_with_the_batch_layer(tmp_path, monkeypatch):
    monkeypatch.delenv("EXPO_METRIC_STORE", raising=False)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "unused"))  # restored afterwards
    data = cached_input(tmp_path, 30_000, 5, progress=lambda line: None)
    assert data.lines > 25_000
    spark = run_spark(data, progress=lambda line: None)
    peer_values, _ = duckdb_peer.hour_metrics(data.files, hour_start_ms(HOUR) // HOUR_MS)
    assert compare(spark.values, peer_values) == []
    assert len(spark.values) > 100 and spark.seconds > 0 and spark.peak > 0
    # The second run of the same hours, in the same JVM, leaves the store as it was, exactly.
    assert spark.warm_seconds > 0 and spark.rerun_changes() == []
    # The comparison does catch a difference.
    key = next(iter(peer_values))
    assert compare(spark.values, {**peer_values, key: peer_values[key] + 1}) != []


def test_a_rerun_must_leave_every_value_exactly_as_it_was():
    first = {("visits", "e", "A", "assigned"): 3.0, ("orders", "e", "A", "assigned"): 1.0}
    same = SparkRun(first, 1.0, 1.0, dict(first), peak=1)
    assert same.rerun_changes() == []
    drifted = {**first, ("visits", "e", "A", "assigned"): 3.0 + 1e-12}
    del drifted[("orders", "e", "A", "assigned")]
    changes = SparkRun(first, 1.0, 1.0, drifted, peak=1).rerun_changes()
    assert changes == [
        "('orders', 'e', 'A', 'assigned'): 1.0 -> None",
        f"('visits', 'e', 'A', 'assigned'): 3.0 -> {3.0 + 1e-12}",
    ]


def test_the_table_marks_targets():
    results = {"parts": {"batch": {"spark_beacons_per_s": 12_000, "spark_over_duckdb": 2.0}}}
    lines = table(results).splitlines()
    assert lines[1].split()[-1] == "NO" and "150,000" in lines[1]
    assert lines[2].split()[-1] == "yes"
