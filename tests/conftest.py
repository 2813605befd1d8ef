"""Shared fixtures: one Spark session for the whole run, temporary lakes, real services."""

from __future__ import annotations

import pytest

from expo_platform.settings import Settings, load_settings
from expo_platform.spark import get_spark

pytest_plugins = ["tests.fixtures_postgres"]


@pytest.fixture(scope="session")
def session_lake(tmp_path_factory) -> Settings:
    """Settings of the lake that the session's Spark (and its Derby metastore) starts with."""
    root = tmp_path_factory.mktemp("session-lake")
    return load_settings({}, lake=root, dagster_home=root / "dagster")


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
    return load_settings(
        {},
        lake=lake,
        metric_store=f"sqlite:///{lake / 'metrics.sqlite'}",
        dagster_home=tmp_path / "dagster",
        spark_conf=session_lake.spark_conf,
    )
