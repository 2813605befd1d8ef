"""The Dagster instance folder: dagster.yaml copied, the spark pool's limit set in the instance."""

from __future__ import annotations

import dagster as dg
import pytest

from expo_platform.errors import ExpoError
from expo_platform.ops import dagster_home
from expo_platform.ops.dagster_home import POOL_LIMITS, SPARK_POOL, ensure_dagster_home
from expo_platform.settings import load_settings
from tests.helpers import PROJECT


def test_a_new_home_gets_the_config_and_an_explicit_spark_pool_limit(tmp_path, monkeypatch):
    settings = load_settings({"DAGSTER_HOME": str(tmp_path / "home")})
    home = ensure_dagster_home(settings, PROJECT)

    assert home == tmp_path / "home"
    assert (home / "dagster.yaml").read_text() == (PROJECT / "dagster.yaml").read_text()
    # Set explicitly, not inherited from dagster.yaml's default_limit: the run queue applies a
    # default only after its first pass, and that first pass let two Spark runs start at once.
    monkeypatch.setenv("DAGSTER_HOME", str(home))  # dagster.yaml reads its base_dir from it
    instance = dg.DagsterInstance.from_config(str(home))
    try:
        assert POOL_LIMITS == {SPARK_POOL: 1}
        assert instance.event_log_storage.get_concurrency_info(SPARK_POOL).slot_count == 1
        assert instance.event_log_storage.get_pool_limits()[0].from_default is False
    finally:
        instance.dispose()

    # Prepared once: a second call neither copies nor runs `dagster instance concurrency set`.
    (home / "dagster.yaml").write_text((home / "dagster.yaml").read_text() + "# local edit\n")

    def fail(*args, **kwargs):
        raise AssertionError("pool limits set again")

    monkeypatch.setattr(dagster_home, "set_pool_limits", fail)
    ensure_dagster_home(settings, PROJECT)
    assert (home / "dagster.yaml").read_text().endswith("# local edit\n")


def test_a_failing_dagster_command_is_a_clear_error(tmp_path):
    with pytest.raises(ExpoError, match="could not set the limit of Dagster pool 'spark'"):
        dagster_home.set_pool_limits(tmp_path / "home", {SPARK_POOL: -1})
