"""Settings: defaults that run with no services, overrides, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from expo_platform.core.hours import hour_iso, hour_key, hour_range, parse_hour
from expo_platform.errors import ExpoError, SettingsError
from expo_platform.settings import (
    JVM_OPTIONS,
    SETTINGS_DOC,
    load_settings,
    path_env,
    resolved_paths,
)
from expo_platform.speed.app import stream_spark_config


def test_defaults_run_on_one_machine(tmp_path):
    s = load_settings({"EXPO_HOME": str(tmp_path)})
    assert s.lake.root == tmp_path / "lake"
    assert s.lake.metric_store == f"sqlite:///{tmp_path / 'lake' / 'metrics.sqlite'}"
    assert s.spark.master == "local[*]"
    assert hour_iso(s.batch.partitions_start) == "2026-01-01T00:00:00Z"
    assert s.local.dagster_home == tmp_path / ".dagster_home"
    conf = s.spark_config()
    assert conf["spark.serializer"] == "org.apache.spark.serializer.KryoSerializer"
    assert (
        str(tmp_path / "lake" / "_metastore") in conf["spark.hadoop.javax.jdo.option.ConnectionURL"]
    )


def test_environment_overrides(tmp_path):
    env = {
        "EXPO_LAKE": str(tmp_path / "elsewhere"),
        "EXPO_METRIC_STORE": "postgresql+psycopg://expo@127.0.0.1:5432/expo",
        "EXPO_SPARK_MASTER": "spark://127.0.0.1:7077",
        "EXPO_SPARK_CONF": "spark.executor.memory=2g, spark.ui.port=4050",
        "EXPO_PARTITIONS_START": "2026-03-01T05",
        "EXPO_MAX_REJECT_RATE": "0.25",
    }
    s = load_settings(env)
    assert s.lake.root == tmp_path / "elsewhere"
    assert s.lake.metric_store.startswith("postgresql+psycopg://")
    assert s.spark_config()["spark.master"] == "spark://127.0.0.1:7077"
    assert s.spark_config()["spark.ui.port"] == "4050"
    assert hour_key(s.batch.partitions_start) == "2026-03-01-05"
    assert s.batch.max_reject_rate == 0.25


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"EXPO_MAX_REJECT_RATE": "lots"}, "EXPO_MAX_REJECT_RATE='lots' is not valid"),
        ({"EXPO_MAX_REJECT_RATE": "2"}, "between 0 and 1"),
        ({"EXPO_PARTITIONS_START": "yesterday"}, "EXPO_PARTITIONS_START"),
        ({"EXPO_METRIC_STORE": "mysql://x"}, "sqlite:/// or postgresql://"),
        ({"EXPO_SPARK_CONF": "novalue"}, "is not key=value"),
        ({"EXPO_LANDING_GRACE_MINUTES": "-3"}, "EXPO_LANDING_GRACE_MINUTES"),
    ],
)
def test_invalid_values_raise_one_clear_error(env, message):
    with pytest.raises(SettingsError, match=message) as info:
        load_settings(env)
    assert "\n" not in str(info.value)


def test_every_setting_is_documented_in_the_readme():
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    for _, env, _, _ in SETTINGS_DOC:
        assert f"`{env}`" in readme


def test_hours():
    assert parse_hour("2026-03-02T05") == parse_hour("2026-03-02-05")
    assert parse_hour("2026-03-02T05:00:00Z") == parse_hour("2026-03-02T05")
    assert [
        hour_key(h) for h in hour_range(parse_hour("2026-03-02T23"), parse_hour("2026-03-03T01"))
    ] == ["2026-03-02-23", "2026-03-03-00", "2026-03-03-01"]
    for bad in ("2026-13-01T00", "2026-03-02", "soon", "2026-03-02T24"):
        with pytest.raises(ExpoError, match="not an hour"):
            parse_hour(bad)


def test_every_spark_jvm_compiles_huge_methods_and_collects_in_parallel(spark, tmp_path):
    """The batch session's JVM runs with -XX:-DontCompileHugeMethods (validation twice as fast)
    and the parallel collector (15% less CPU for the bench hour; README), and the
    streaming app and executors get both too."""
    management = spark.sparkContext._jvm.java.lang.management.ManagementFactory
    arguments = list(management.getRuntimeMXBean().getInputArguments())
    assert all(option in arguments for option in JVM_OPTIONS.split())
    collectors = {bean.getName() for bean in management.getGarbageCollectorMXBeans()}
    assert collectors == {"PS Scavenge", "PS MarkSweep"}
    assert spark.conf.get("spark.sql.execution.useObjectHashAggregateExec") == "false"
    s = load_settings({"EXPO_LAKE": str(tmp_path / "lake")})
    assert s.spark_config()["spark.executor.extraJavaOptions"] == JVM_OPTIONS
    assert stream_spark_config(s)["spark.driver.extraJavaOptions"] == JVM_OPTIONS


def test_relative_paths_are_anchored_at_one_home_whatever_the_working_folder(tmp_path, monkeypatch):
    """The streaming app runs in the services folder, Dagster in the project, the CLI
    anywhere: all must find one lake, one store and one services folder."""
    env = {"EXPO_LAKE": "data/lake", "EXPO_METRIC_STORE": "sqlite:///store/m.sqlite"}
    seen = []
    for cwd in (tmp_path / "a", tmp_path / "b" / "c"):
        cwd.mkdir(parents=True)
        monkeypatch.chdir(cwd)
        seen.append(load_settings({**env, "EXPO_HOME": str(tmp_path / "home")}))
    first, second = seen
    assert first == second
    assert first.lake.root == tmp_path / "home" / "data" / "lake"
    assert first.lake.metric_store == f"sqlite:///{tmp_path / 'home' / 'store' / 'm.sqlite'}"
    assert first.local.services_dir == tmp_path / "home" / ".services"
    # Without EXPO_HOME: the project folder of this checkout, not the working folder.
    project = Path(__file__).resolve().parent.parent
    assert load_settings({}).lake.root == project / "lake"
    # A child process given path_env resolves exactly the same places.
    assert load_settings(path_env(first)) == first
    assert resolved_paths(first)["landing zone"] == str(first.lake.root / "landing" / "beacons")
