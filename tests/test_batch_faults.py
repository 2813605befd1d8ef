"""Batch-layer faults: `expo batch` killed with SIGKILL in the middle of a partition write.

Each table partition is written to a staging folder and swapped in whole (`lake.swap_in`),
so after every kill each partition a reader can find is complete, and a run of the same
hours afterwards leaves the store of a clean run: the oracle's (`tests/reference.py`).
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from expo_platform import lake
from expo_platform.core.hours import parse_hour
from expo_platform.devtools.generator import GeneratorConfig
from tests.helpers import assert_store_equals_oracle, expo_batch, generated_lake

FIRST, LAST = parse_hour("2026-03-02T00"), parse_hour("2026-03-02T02")
CONFIG = GeneratorConfig(
    start=FIRST, hours=4, visitors=300, seed=43, dirty_fraction=0.02, trap_fraction=0.3
)


def _kill_while_writing(settings, table: str, timeout: float = 600) -> None:
    """Run `expo batch` and SIGKILL it (and its JVM) once it writes a partition of `table`."""
    staging = settings.lake.root / lake.STAGING
    root = lake.TABLES[table].root(settings)
    process = expo_batch(settings, FIRST, LAST, popen=True)
    deadline = time.monotonic() + timeout
    # A staging folder of the table, or Spark's own `_temporary` in a partition (a write
    # straight into the partition, as before staging: the test must catch that too).
    while not any(staging.glob(f"{table}.*")) and not any(root.glob("*=*/_temporary")):
        assert process.poll() is None, f"expo batch ended before writing {table}"
        assert time.monotonic() < deadline, f"no write of {table} within {timeout}s"
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)


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

    done = expo_batch(settings, FIRST, LAST)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    _partitions_are_whole(settings)
    assert_store_equals_oracle(settings, FIRST, LAST)
    # The killed runs' staging folders went with the next write of their partitions.
    assert not any((settings.lake.root / lake.STAGING).iterdir())
