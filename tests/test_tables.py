"""The lake's table registry: names, schemas, formats and the partition folders on disk."""

from __future__ import annotations

import dataclasses
from datetime import UTC, date, datetime

import pytest

from expo_platform import lake
from expo_platform.analysis.pre_period import VISITOR_TOTALS_SCHEMA
from expo_platform.analysis.scorecards import VISITOR_DAILY_SCHEMA
from expo_platform.core.beacons import BEACON_SCHEMA, REJECT_SCHEMA
from expo_platform.core.metrics import SKETCHES_SCHEMA
from expo_platform.core.visits import SESSIONS_SCHEMA
from expo_platform.errors import ExpoError
from expo_platform.settings import load_settings

HOUR = datetime(2026, 3, 2, 5, tzinfo=UTC)
DAY = date(2026, 3, 2)


def test_the_registry_holds_every_lake_table_with_its_schema_and_format():
    tables = {name: (t.schema, t.format, t.partition_column) for name, t in lake.TABLES.items()}
    assert tables == {
        "beacons": (BEACON_SCHEMA, "parquet", "hourly_partitioner"),
        "beacon_rejects": (REJECT_SCHEMA, "parquet", "hourly_partitioner"),
        "sessions": (SESSIONS_SCHEMA, "orc", "hourly_partitioner"),
        "visitor_sketches": (SKETCHES_SCHEMA, "parquet", "hourly_partitioner"),
        "visitor_daily": (VISITOR_DAILY_SCHEMA, "parquet", "day"),
        "visitor_totals": (VISITOR_TOTALS_SCHEMA, "parquet", "day"),
    }
    assert all(lake.table(name) is t for name, t in lake.TABLES.items())
    # The speed layer keeps its sessions as Parquet, the batch layer's Hive table is ORC.
    assert lake.STREAM_SESSIONS.format == "parquet"
    with pytest.raises(dataclasses.FrozenInstanceError):
        lake.SESSIONS.format = "parquet"  # type: ignore[misc]


def test_an_unknown_table_is_a_clear_error():
    with pytest.raises(ExpoError, match=r"no lake table 'session'.*beacons, beacon_rejects"):
        lake.table("session")


def test_partition_paths_keep_the_layout_on_disk(settings):
    tables = settings.lake.root / "tables"
    assert lake.SESSIONS.partition_path(settings, HOUR) == (
        tables / "sessions" / "hourly_partitioner=2026-03-02-05"
    )
    assert lake.BEACONS.partition_path(settings, HOUR) == (
        tables / "beacons" / "hourly_partitioner=2026-03-02-05"
    )
    assert lake.VISITOR_DAILY.partition_path(settings, DAY) == (
        tables / "visitor_daily" / "day=2026-03-02"
    )
    stream = settings.lake.root / "stream"
    assert lake.STREAM_SKETCHES.partition_path(settings, HOUR) == (
        stream / "sketches" / "hourly_partitioner=2026-03-02-05"
    )
    batch = lake.STREAM_BEACONS.root(settings) / "batch=0000-00000001"
    assert lake.STREAM_BEACONS.partition_in(batch, HOUR) == (
        stream / "beacons" / "batch=0000-00000001" / "hourly_partitioner=2026-03-02-05"
    )
    assert lake.landing_partition(settings, HOUR) == (
        settings.lake.root / "landing" / "beacons" / "hour=2026-03-02-05"
    )


def test_a_region_keeps_the_stream_tables_in_its_own_folder(tmp_path):
    settings = load_settings({"EXPO_LAKE": str(tmp_path), "EXPO_STREAM_REGION": "west"})
    assert lake.STREAM_SESSIONS.root(settings) == tmp_path / "stream-west" / "sessions"
    assert lake.SESSIONS.root(settings) == tmp_path / "tables" / "sessions"


def test_partition_folders_read_back_as_hours_and_days(settings):
    root = lake.SESSIONS.root(settings)
    for hour in (HOUR, datetime(2026, 3, 1, 23, tzinfo=UTC)):
        lake.SESSIONS.partition_path(settings, hour).mkdir(parents=True)
    (root / "_temporary").mkdir()
    assert lake.SESSIONS.hours_in(root) == [datetime(2026, 3, 1, 23, tzinfo=UTC), HOUR]
    assert not lake.SESSIONS.has_partition(settings, HOUR)  # no _SUCCESS: not written whole
    (lake.SESSIONS.partition_path(settings, HOUR) / "_SUCCESS").touch()
    assert lake.SESSIONS.has_partition(settings, HOUR)
    lake.SESSIONS.remove_partition(settings, HOUR)
    assert lake.SESSIONS.hours_in(root) == [datetime(2026, 3, 1, 23, tzinfo=UTC)]

    assert lake.VISITOR_DAILY.days_present(settings) == []
    for day, whole in ((DAY, True), (date(2026, 3, 3), False)):
        folder = lake.VISITOR_DAILY.partition_path(settings, day)
        folder.mkdir(parents=True)
        if whole:
            (folder / "_SUCCESS").touch()
    assert lake.VISITOR_DAILY.days_present(settings) == [DAY]


def test_tables_write_and_read_their_partitions(spark, settings):
    rows = [("{", "malformed_json", "not a JSON object", None, None)]
    lake.BEACON_REJECTS.write_partition(spark.createDataFrame(rows, REJECT_SCHEMA), settings, HOUR)
    assert lake.BEACON_REJECTS.has_partition(settings, HOUR)
    assert list(lake.BEACON_REJECTS.partition_path(settings, HOUR).glob("*.parquet"))
    later = datetime(2026, 3, 2, 6, tzinfo=UTC)  # never written: contributes nothing
    read = lake.BEACON_REJECTS.read_partitions(spark, settings, [HOUR, later])
    assert [tuple(r) for r in read.collect()] == rows
    empty = lake.SESSIONS.read_partitions(spark, settings, [HOUR])
    assert empty.schema == spark.createDataFrame([], SESSIONS_SCHEMA).schema
    assert empty.count() == 0
