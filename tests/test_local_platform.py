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

from expo_platform.ops.services import PLATFORM_NAMES, free_port, recorded_service

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


@pytest.mark.slow
def test_up_starts_everything_and_down_stops_it(tmp_path):
    services = tmp_path / "services"
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXPO_")}
    env.update(
        EXPO_LAKE=str(tmp_path / "lake"),
        EXPO_SERVICES_DIR=str(services),
        EXPO_KAFKA_BOOTSTRAP=f"127.0.0.1:{free_port()}",
        EXPO_ZOOKEEPER=f"127.0.0.1:{free_port()}",
        EXPO_STREAM_UI_PORT=str(free_port()),
        EXPO_CONNECT_PORT=str(free_port()),
        EXPO_CONNECT_UI_PORT=str(free_port()),
        EXPO_STREAM_TRIGGER_SECONDS="10",
        EXPO_UP_RATE="50",
        DAGSTER_HOME=str(tmp_path / "dagster_home"),
        PYSPARK_PYTHON=sys.executable,
    )
    dagster_port = free_port()
    try:
        out = _local("up", env, dagster_port)
        assert f"Dagster UI: http://127.0.0.1:{dagster_port}" in out
        assert f"http://127.0.0.1:{env['EXPO_STREAM_UI_PORT']}" in out
        assert f"EXPO_SPARK_REMOTE=sc://127.0.0.1:{env['EXPO_CONNECT_PORT']}" in out
        running = {name: recorded_service(services, name) for name in PLATFORM_NAMES}
        assert all(s is not None and s.alive() for s in running.values()), out
        query = """{ repositoriesOrError { ... on RepositoryConnection { nodes {
            sensors { name sensorState { status } } } } } }"""
        body = json.dumps({"query": query}).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{dagster_port}/graphql", body, {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            (repository,) = json.load(response)["data"]["repositoriesOrError"]["nodes"]
        sensors = {x["name"]: x["sensorState"]["status"] for x in repository["sensors"]}
        # EXPO_SUPERVISE=on: the supervisor runs, as do the other sensors.
        assert sensors["streaming_supervisor"] == "RUNNING"
        assert sensors["late_data_sensor"] == "RUNNING"
        assert sensors["alert_on_run_failure"] == "RUNNING"
        assert sensors["alert_on_failed_check"] == "RUNNING"
        again = _local("up", env, dagster_port)  # idempotent: nothing new starts
        assert "(started)" not in again
    finally:
        down = _local("down", env, dagster_port)
    assert all(f"{name} pid=" in down for name in PLATFORM_NAMES), down
    assert all(not s.alive() for s in running.values())
