"""Batch-layer faults: `expo batch` killed with SIGKILL in the middle of a partition write
and again while it upserts metrics into the store; PostgreSQL crashed under a run.

Each table partition is written to a staging folder and swapped in whole (`lake.swap_in`),
and each upsert is one transaction, so after every kill each partition a reader can find is
complete, and a run of the same hours afterwards leaves the store of a clean run: the
oracle's (`tests/reference.py`). A killed Dagster run worker is in test_dagster_dev.py, a
full lake disk in test_lake_full.py.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from expo_platform import lake
from expo_platform.core.hours import parse_hour
from expo_platform.devtools.generator import GeneratorConfig
from expo_platform.serving.store import MetricStore
from tests.helpers import assert_store_equals_oracle, expo_batch, generated_lake, wait

FIRST, SECOND, LAST = (parse_hour(f"2026-03-02T0{h}") for h in range(3))
CONFIG = GeneratorConfig(
    start=FIRST, hours=4, visitors=300, seed=43, dirty_fraction=0.02, trap_fraction=0.3
)


def _kill_when(settings, ready, what: str, timeout: float = 600) -> None:
    """Run `expo batch` and SIGKILL it (and its JVM) once `ready()` holds."""
    process = expo_batch(settings, FIRST, LAST, popen=True)
    deadline = time.monotonic() + timeout
    while not ready():
        assert process.poll() is None, f"expo batch ended before {what}"
        assert time.monotonic() < deadline, f"no {what} within {timeout}s"
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)


def _kill_while_writing(settings, table: str) -> None:
    """SIGKILL `expo batch` once it writes a partition of `table`: a staging folder of the
    table, or Spark's own `_temporary` in a partition (a write straight into the partition,
    as before staging: the test must catch that too)."""
    staging = settings.lake.root / lake.STAGING
    root = lake.TABLES[table].root(settings)
    _kill_when(
        settings,
        lambda: any(staging.glob(f"{table}.*")) or any(root.glob("*=*/_temporary")),
        f"a write of {table}",
    )


def _kill_while_upserting(settings) -> None:
    """SIGKILL `expo batch` once its first experiment points are in the store: its later
    upserts (the next hours' metrics and quality counts) are under way or ahead."""

    def stored() -> bool:
        with MetricStore(settings.lake.metric_store) as store:
            return bool(store.query(layer="batch"))

    _kill_when(settings, stored, "experiment points in the store")


def _partitions_are_whole(settings) -> list[str]:
    """Every partition folder a reader can list holds a finished write (its _SUCCESS)."""
    found = []
    for table in lake.TABLES.values():
        for partition in table.partitions_in(table.root(settings)):
            assert (partition / "_SUCCESS").exists(), f"a partial partition: {partition}"
            found.append(f"{table.name}/{partition.name}")
    return found


@pytest.mark.slow
def test_expo_batch_killed_mid_write_leaves_whole_partitions_and_a_rerun_equals_the_oracle(
    tmp_path,
):
    settings, _ = generated_lake(tmp_path, {"spark.sql.shuffle.partitions": "4"}, CONFIG)
    _kill_while_writing(settings, "beacons")
    first = _partitions_are_whole(settings)
    _kill_while_writing(settings, "sessions")
    second = _partitions_are_whole(settings)
    assert any(p.startswith("beacons/") for p in second) and len(second) >= len(first)
    _kill_while_upserting(settings)  # each upsert is one transaction: all of it or none
    _partitions_are_whole(settings)

    done = expo_batch(settings, FIRST, LAST)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    _partitions_are_whole(settings)
    assert_store_equals_oracle(settings, FIRST, LAST)
    # The killed runs' staging folders went with the next write of their partitions.
    assert not any((settings.lake.root / lake.STAGING).iterdir())


@pytest.mark.slow
def test_postgres_crash_mid_run_fails_the_run_clearly_and_a_rerun_equals_the_oracle(
    tmp_path, postgres_server
):
    """`pg_ctl stop -m immediate` (every server process ends at once, as in a crash) once
    `expo batch` has written its first hour's points: the run fails with an error that names
    the store, the lake keeps whole partitions, and after the server's restart (a recovery
    from its write-ahead log) a run of the same hours leaves the oracle's store."""
    settings, _ = generated_lake(tmp_path, {"spark.sql.shuffle.partitions": "4"}, CONFIG)
    settings = settings.replace(lake={"metric_store": postgres_server.url})
    process = expo_batch(settings, FIRST, SECOND, popen=True)

    def first_points() -> bool:
        with MetricStore(postgres_server.url) as store:
            return bool(store.query(layer="batch"))

    try:
        wait(first_points, 600, "the first hour's points in PostgreSQL")
        postgres_server.stop("immediate")
        assert process.wait(timeout=600) != 0, "expo batch went on without its store"
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    output = (tmp_path / "expo-batch.log").read_text(errors="replace")
    last_line = output.strip().splitlines()[-1]
    # The platform's own error, not Dagster's wrapper: which store, and that it is down.
    assert last_line.startswith("expo: error: hourly_"), last_line
    assert f"metric store {postgres_server.url} is unreachable" in last_line, last_line
    _partitions_are_whole(settings)

    postgres_server.start()
    done = expo_batch(settings, FIRST, SECOND)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    _partitions_are_whole(settings)
    assert_store_equals_oracle(settings, FIRST, SECOND)
