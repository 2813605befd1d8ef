"""Shared fixtures: one Spark session for the whole run, temporary lakes, real services."""

from __future__ import annotations

import pytest

from expo_platform.settings import Settings
from expo_platform.spark import get_spark
from tests.helpers import lake_settings

# Fixture modules: their fixtures (postgres_url, kafka, zookeeper, mailbox, webhook) reach
# every test module without an import.
pytest_plugins = ["tests.fixtures_postgres", "tests.fixtures_services", "tests.fixtures_alerts"]

# Seconds per test file in the suite with two workers (`make test`, 2026-11-27), the slowest
# first. `make test` hands whole files to workers in collection order (`--dist loadfile
# --no-loadscope-reorder`), so collecting the longest first lets each worker start on a
# long file and fill up with short ones. xdist's default order, most tests first, left the
# one-test files of four to seven minutes for the end.
SLOWEST_FILES = {
    "test_stream_faults.py": 665,
    "test_stream.py": 430,
    "test_live_loop.py": 360,
    "test_dagster_dev.py": 347,
    "test_batch_layer.py": 330,
    "test_cluster.py": 318,
    "test_adversarial_day.py": 160,
    "test_visits_metrics.py": 125,
    "test_cli.py": 115,
    "test_supervisor.py": 107,
    "test_local_platform.py": 103,
    "test_analysis.py": 65,
    "test_operations.py": 63,
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The slowest files first; the order within a file stays."""
    items.sort(key=lambda item: -SLOWEST_FILES.get(item.path.name, 0))


@pytest.fixture(scope="session")
def session_lake(tmp_path_factory) -> Settings:
    """Settings of the lake that the session's Spark (and its Derby metastore) starts with."""
    root = tmp_path_factory.mktemp("session-lake")
    return lake_settings(root, root / "dagster")


@pytest.fixture(scope="session")
def spark(session_lake):
    """One local Spark session for every test."""
    session = get_spark(session_lake)
    yield session
    session.stop()


@pytest.fixture
def settings(tmp_path, session_lake) -> Settings:
    """Settings of a fresh, empty lake for one test (the Hive metastore stays the session's)."""
    lake = tmp_path / "lake"
    lake.mkdir()
    return lake_settings(lake, tmp_path / "dagster", lake / "metrics.sqlite").replace(
        spark={"conf": session_lake.spark.conf}
    )
