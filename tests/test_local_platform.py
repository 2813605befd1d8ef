"""`make up` / `make down` for real: every process of the platform starts, answers, and is
stopped by pid."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from expo_platform.ops.processes import (
    GENERATOR,
    PLATFORM_NAMES,
    free_port,
    recorded_service,
    stop_from_pidfiles,
)
from expo_platform.ops.supervision import kafka_lag
from expo_platform.serving.store import MetricStore
from expo_platform.settings import load_settings
from tests import reference
from tests.helpers import wait

PROJECT = Path(__file__).resolve().parent.parent


def _local(command: str, env: dict, dagster_port: int) -> str:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "expo_platform.ops.local",
            command,
            "--dagster-port",
            str(dagster_port),
        ],
        cwd=PROJECT,
        env=env,
        capture_output=True,
        text=True,
        timeout=420,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _speed_quality(store_url: str) -> dict[str, dict[str, float]]:
    """The stream's data-quality counts in the store, per hour: {hour: {metric: value}}."""
    with MetricStore(store_url) as store:
        points = store.values(layer="speed", quality=True)
    by_hour: dict[str, dict[str, float]] = {}
    for (metric, experiment, _variant, _population, hour), value in points.items():
        if not experiment:
            by_hour.setdefault(hour, {})[metric] = value
    return by_hour


@pytest.mark.slow
def test_up_starts_everything_down_stops_it_and_a_second_up_counts_every_beacon_once(tmp_path):
    """`make up`: every process starts and answers; `up` again starts nothing; `make down`
    stops it all by pid. Then `make up` once more: the local broker comes back empty, so
    `up` starts the stream in a new epoch from the broker's start. Its generator's backlog
    sends again traffic the first run counted; every beacon still counts once, in the
    landing zone's figures (the oracle) and in the speed layer's."""
    services = tmp_path / "services"
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXPO_")}
    env.update(
        EXPO_HOME=str(tmp_path),
        EXPO_LAKE="lake",
        EXPO_SERVICES_DIR="services",
        EXPO_KAFKA_BOOTSTRAP=f"127.0.0.1:{free_port()}",
        EXPO_ZOOKEEPER=f"127.0.0.1:{free_port()}",
        EXPO_STREAM_UI_PORT=str(free_port()),
        EXPO_CONNECT_PORT=str(free_port()),
        EXPO_CONNECT_UI_PORT=str(free_port()),
        EXPO_DASHBOARD_PORT=str(free_port()),
        EXPO_STREAM_TRIGGER_SECONDS="5",
        EXPO_UP_RATE="20",
        # Longer than `down` and the second `up` take: its backlog repeats the first run's end.
        EXPO_UP_BACKLOG_MINUTES="6",
        DAGSTER_HOME=str(tmp_path / "dagster_home"),
        PYSPARK_PYTHON=sys.executable,
    )
    settings = load_settings(env)
    lake = tmp_path / "lake"
    store_url = f"sqlite:///{lake / 'metrics.sqlite'}"
    progress = lake / "stream" / "progress"
    dagster_port = free_port()

    def epoch_messages(epoch: int) -> int:
        return sum(
            json.loads(p.read_text())["messages"] for p in progress.glob(f"{epoch:04d}-*.json")
        )

    try:
        out = _local("up", env, dagster_port)
        assert "new epoch" not in out
        assert f"Dagster UI: http://127.0.0.1:{dagster_port}" in out
        assert f"http://127.0.0.1:{env['EXPO_STREAM_UI_PORT']}" in out
        assert f"EXPO_SPARK_REMOTE=sc://127.0.0.1:{env['EXPO_CONNECT_PORT']}" in out
        dashboard = f"http://127.0.0.1:{env['EXPO_DASHBOARD_PORT']}/"
        assert f"experiments dashboard: {dashboard}" in out
        with urllib.request.urlopen(dashboard, timeout=30) as response:
            assert "Expo experiments" in response.read().decode()
        running = {name: recorded_service(services, name) for name in PLATFORM_NAMES}
        assert all(s is not None and s.alive() for s in running.values()), out
        sensors = _sensor_states(dagster_port)
        # EXPO_SUPERVISE=on: the supervisor runs, as do the other sensors.
        for name in (
            "streaming_supervisor",
            "late_data_sensor",
            "alert_on_run_failure",
            "alert_on_failed_check",
            "dead_run_workers",
        ):
            assert sensors[name] == "RUNNING", (name, sensors)
        again = _local("up", env, dagster_port)  # idempotent: nothing new starts
        assert "(started)" not in again
        wait(lambda: epoch_messages(0) > 0, 300, "a micro-batch of the first run")
        down = _local("down", env, dagster_port)
        assert all(f"{name} pid=" in down for name in PLATFORM_NAMES), down
        assert all(not s.alive() for s in running.values())

        second = _local("up", env, dagster_port)
        # The second `up` found the stream's state of the first and the broker empty.
        assert "stream: new epoch 1 from the broker's start" in second, second
        wait(lambda: epoch_messages(1) > 0, 300, "a micro-batch of the second run")
        # Traffic stops; the stream takes in the rest of the topic.
        stop_from_pidfiles(services, names=[GENERATOR])
        wait(lambda: kafka_lag(settings) == 0, 300, "the stream at the end of the topic")
        stream = recorded_service(services, "stream")
        assert stream is not None and stream.alive(), "the stream exited"
        log = (services / "stream.log").read_text(errors="replace")
        assert "new epoch from the broker's start" not in log  # `up` did it, not the query
        expected = reference.quality(lake / "landing" / "beacons")
        counted = _speed_quality(store_url)
    finally:
        _local("down", env, dagster_port)
    # The second run sent some of the first run's beacons again: they are duplicates.
    assert sum(c["beacons_duplicate"] for c in expected.values()) > 0, expected
    assert set(counted) >= set(expected)
    for hour, want in expected.items():
        got = counted[hour]
        assert got["beacons_total"] == want["beacons_total"], hour
        # A beacon behind the watermark is counted as late by the stream, not as valid.
        assert got["beacons_valid"] + got["beacons_late"] == want["beacons_valid"], hour
        assert got["beacons_duplicate"] == want["beacons_duplicate"], hour
        rejected = {k: v for k, v in want.items() if k.startswith("beacons_rejected_")}
        # The stream has no wrong_partition count: it lands a beacon by its own time.
        assert {k: got.get(k, 0.0) for k in rejected} == rejected, hour


def _sensor_states(dagster_port: int) -> dict[str, str]:
    """Every sensor's status, from the webserver's GraphQL API."""
    query = """{ repositoriesOrError { ... on RepositoryConnection { nodes {
        sensors { name sensorState { status } } } } } }"""
    body = json.dumps({"query": query}).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{dagster_port}/graphql", body, {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        (repository,) = json.load(response)["data"]["repositoriesOrError"]["nodes"]
    return {x["name"]: x["sensorState"]["status"] for x in repository["sensors"]}
