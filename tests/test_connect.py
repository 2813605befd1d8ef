"""The batch layer on the Spark Connect server that `make up` starts (`ops/connect.py`).

The server is started by the project's own code, on loopback, with the Hive metastore inside
it. `expo batch` then runs as a thin client (EXPO_SPARK_REMOTE): the same library, unchanged,
and the store must hold what the independent oracle (`tests/reference.py`) computes from the
landing files of traffic full of traps.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import dagster as dg
import pytest

from definitions import build_defs
from expo_platform.core.hours import parse_hour
from expo_platform.devtools.generator import GeneratorConfig
from expo_platform.ops.connect import remote_url, start_connect
from expo_platform.ops.processes import CONNECT, free_port, recorded_service
from tests.helpers import (
    assert_store_equals_oracle,
    expo_batch,
    exposed,
    generated_lake,
    listening_sockets,
    spark_sql_executions,
    supervisor_tick,
    wait,
)

FIRST, LAST = parse_hour("2026-03-02T00"), parse_hour("2026-03-02T03")
CONFIG = GeneratorConfig(
    start=FIRST, hours=5, visitors=300, seed=41, dirty_fraction=0.02, trap_fraction=0.3
)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("connect")
    settings, _ = generated_lake(root, {"spark.sql.shuffle.partitions": "4"}, CONFIG)
    settings = settings.replace(
        local={
            "services_dir": root / "services",
            "connect_port": free_port(),
            "connect_ui_port": free_port(),
        },
        spark={"master": "local[2]", "conf": {"spark.sql.shuffle.partitions": "4"}},
    )
    service = start_connect(settings)
    yield settings, service
    # The supervisor's test kills it and leaves a restarted one, recorded in the same place.
    current = recorded_service(settings.local.services_dir, CONNECT)
    assert current is None or not current.alive() or current.stop(timeout=60)


@pytest.mark.slow
def test_expo_batch_on_the_connect_server_equals_the_oracle(server):
    settings, service = server
    remote = remote_url(service.port)
    done = expo_batch(settings, FIRST, LAST, EXPO_SPARK_REMOTE=remote)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"on {remote}" in done.stdout
    assert_store_equals_oracle(settings, FIRST, LAST)

    # The work ran in the server: its Spark UI lists the queries of the run.
    assert spark_sql_executions(settings.local.connect_ui_port) > 20


def test_the_connect_server_listens_on_loopback_only(server):
    settings, service = server
    sockets = listening_sockets([service.pid])
    ports = {port for *_, port in sockets}
    assert {settings.local.connect_port, settings.local.connect_ui_port} <= ports, sockets
    assert exposed(sockets) == []


@pytest.mark.slow
def test_the_supervisor_restarts_a_dead_batch_server_then_only_alerts(server, webhook, monkeypatch):
    """Runs last: it kills the module's server, and so does its restarted one."""
    settings, service = server
    monkeypatch.setenv("EXPO_ALERT_WEBHOOK_URL", webhook.url)
    watched = settings.replace(
        supervisor={"supervise": "on", "restarts_per_hour": 1},
        spark={"remote": remote_url(service.port)},
        secrets=settings.secrets | {"EXPO_ALERT_WEBHOOK_URL"},
    )
    defs = build_defs(watched)
    sensor = "batch_server_supervisor"
    assert defs.resolve_sensor_def(sensor).default_status == dg.DefaultSensorStatus.RUNNING
    with dg.DagsterInstance.ephemeral() as instance:
        result, cursor = supervisor_tick(defs, instance, sensor=sensor)
        assert isinstance(result, dg.SkipReason) and result.skip_message.startswith("ok"), result
        assert json.loads(cursor)["seen"]["app_running"] is True

        os.kill(service.pid, signal.SIGKILL)
        wait(lambda: not service.alive(), 30, "the killed server to go")
        request, cursor = supervisor_tick(defs, instance, cursor, sensor=sensor)
        assert isinstance(request, dg.RunRequest), request
        assert "the batch server is absent or finished" in request.tags["expo/reasons"]

        restart = defs.resolve_job_def("restart_batch_server")
        assert restart.execute_in_process(instance=instance, tags=request.tags).success
        again = recorded_service(settings.local.services_dir, CONNECT)
        assert again is not None and again.alive() and again.pid != service.pid
        # A client works on the new server, and the supervisor finds it healthy. The client
        # runs in a process of its own: a Connect session would switch this test process's
        # pyspark to Connect columns, and break the classic sessions of the tests after it.
        count = "from pyspark.sql import SparkSession as S; import sys; "
        count += "print(S.builder.remote(sys.argv[1]).create().range(10).count())"
        client = [sys.executable, "-c", count, remote_url(again.port)]
        done = subprocess.run(client, capture_output=True, text=True, timeout=120)
        assert done.stdout.strip() == "10", done.stderr[-2000:]
        ticks: list = []

        def healthy() -> bool:
            # On a loaded machine one UI request may time out: that tick alerts ("the Spark
            # UI is unreachable while the process runs"), it never restarts; the next is ok.
            nonlocal cursor
            result, cursor = supervisor_tick(defs, instance, cursor, sensor=sensor)
            ticks.append(result)
            return isinstance(result, dg.SkipReason) and result.skip_message.startswith("ok")

        wait(healthy, 120, "a healthy tick of the restarted server")
        assert not any(isinstance(t, dg.RunRequest) for t in ticks), ticks
        assert "batch server restarted" in webhook.bodies[0]["text"]

        # The budget (one restart an hour) is spent: the next death only alerts.
        os.kill(again.pid, signal.SIGKILL)
        wait(lambda: not again.alive(), 30, "the killed server to go")
        result, cursor = supervisor_tick(defs, instance, cursor, sensor=sensor)
        assert isinstance(result, dg.SkipReason)
        assert "restart budget of 1 per hour exhausted" in result.skip_message
        assert any("batch server unhealthy, not restarted" in b["text"] for b in webhook.bodies[1:])
