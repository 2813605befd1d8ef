"""The Lambda loop closed, end to end, on the wall clock, through `make up`'s own entry point.

`expo_platform.ops.local up` starts ZooKeeper, the broker, the streaming app, live traffic and
Dagster (webserver, daemon, schedules, sensors). The traffic's backlog covers two whole hours,
so within minutes the stream has written speed points of the hour before last, and
Dagster's own automation (the ingest schedule, then the metrics sensor) has recomputed it
from the stream's landing files. The test asserts values: the merged view returns the batch
points, the reconciliation finds no drift, the supervisor's ticks are healthy, and every socket the
platform listens on is on loopback.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime

import dagster as dg
import pytest

from expo_platform.core.hours import ONE_HOUR, hour_iso, hour_key, truncate_hour
from expo_platform.core.metrics import ALLOWED_ERROR, EXPERIMENT_METRICS
from expo_platform.ops.processes import (
    PLATFORM_NAMES,
    free_port,
    recorded_service,
    running_services,
)
from expo_platform.serving.reconcile import reconcile_hour
from expo_platform.serving.store import MetricStore
from tests.helpers import PROJECT, exposed, listening_sockets, spark_sql_executions, wait
from tests.test_local_platform import _local

# From `up` to the batch points of the hour. The backlog reaches back to the start of the hour
# before last, so a run that starts late in an hour has up to three hours to take in: whole
# runs took 706-1,077 s on 2 cores, depending on the minute they started.
DEADLINE_S = 25 * 60


def _metrics(env: dict, hour: str, layer: str) -> dict[tuple, float]:
    """`expo metrics --format json` of one hour and layer, as a user runs it."""
    done = subprocess.run(
        [sys.executable, "-m", "expo_platform.cli", "metrics", "--layer", layer]
        + ["--from", hour, "--to", hour, "--format", "json"],
        cwd=PROJECT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return {
        (p["metric"], p["experiment"], p["variant"], p["population"]): p["value"]
        for p in json.loads(done.stdout)
    }


def _sensor_ticks(port: int, name: str) -> list[dict]:
    """The newest ticks of a sensor, newest first, from the webserver's GraphQL API."""
    query = """query($name: String!) { sensorOrError(sensorSelector: {
        repositoryLocationName: "expo", repositoryName: "__repository__", sensorName: $name})
        { ... on Sensor { sensorState { ticks(limit: 5) { status skipReason } } } } }"""
    body = json.dumps({"query": query, "variables": {"name": name}}).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql", body, {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)["data"]["sensorOrError"]["sensorState"]["ticks"]


@pytest.mark.slow
def test_make_up_closes_the_lambda_loop_on_live_traffic(tmp_path, monkeypatch):
    now = datetime.now(UTC)
    hour = truncate_hour(now) - 2 * ONE_HOUR  # complete, and so is the hour after it
    backlog = int((now - hour).total_seconds() // 60) + 5
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXPO_")}
    env.update(
        EXPO_HOME=str(tmp_path),
        EXPO_LAKE="lake",  # relative: every process must resolve it under EXPO_HOME
        EXPO_SERVICES_DIR="services",
        DAGSTER_HOME=str(tmp_path / "dagster_home"),
        EXPO_KAFKA_BOOTSTRAP=f"127.0.0.1:{free_port()}",
        EXPO_ZOOKEEPER=f"127.0.0.1:{free_port()}",
        EXPO_STREAM_UI_PORT=str(free_port()),
        EXPO_CONNECT_PORT=str(free_port()),
        EXPO_CONNECT_UI_PORT=str(free_port()),
        EXPO_DASHBOARD_PORT=str(free_port()),
        EXPO_STREAM_TRIGGER_SECONDS="45",
        EXPO_UP_RATE="4",
        EXPO_UP_BACKLOG_MINUTES=str(backlog),
        # The batch layer starts with the hour the backlog begins in (its last five minutes).
        EXPO_PARTITIONS_START=hour_key(hour - ONE_HOUR),
        EXPO_LANDING_GRACE_MINUTES="0",
        EXPO_INGEST_EVERY_MINUTES="1",
        EXPO_SUPERVISOR_INTERVAL_SECONDS="20",
        EXPO_MAX_REJECT_RATE="0.5",
        PYSPARK_PYTHON=sys.executable,
    )
    lake = tmp_path / "lake"
    store_url = f"sqlite:///{lake / 'metrics.sqlite'}"
    dagster_port = free_port()
    iso = hour_iso(hour)
    try:
        out = _local("up", env, dagster_port)
        assert f"lake: {lake}" in out and f"metric store: {store_url}" in out
        started = time.monotonic()

        def converged() -> bool:
            """Batch points of the hour agree with the speed points. A schedule tick can
            ingest an hour before the stream has landed all of it; the late-data sensor
            then redoes the hour, so the test waits for agreement, not for the first points."""
            if not (lake / "metrics.sqlite").exists():
                return False
            with MetricStore(store_url) as store:
                drift = reconcile_hour(store, iso, 0.02)
            return drift.compared and all(
                value <= ALLOWED_ERROR.get(metric, 0.0) for metric, value in drift.drift.items()
            )

        with contextlib.suppress(AssertionError):  # the assertions below say what disagrees
            wait(converged, DEADLINE_S, f"batch points of {iso} that agree with the stream's")
        print(f"batch points of {iso} after {time.monotonic() - started:.0f}s")

        # 1. The stream wrote speed points of the hour and landed its beacons.
        landed = list((lake / "landing" / "beacons" / f"hour={hour_key(hour)}").glob("*.json"))
        assert landed and all(p.name.startswith("stream-") for p in landed)
        with MetricStore(store_url) as store:
            speed, batch = (
                {
                    k: v
                    for k, v in store.values(layer=layer, hour_from=iso, hour_to=iso).items()
                    if k[0] in EXPERIMENT_METRICS  # not the rolling visitors of minute :00
                }
                for layer in ("speed", "batch")
            )
            drift = reconcile_hour(store, iso, 0.02)
        assert len(speed) > 100 and set(speed) == set(batch)
        # 2. No person asked: the schedule ingested the hours, a sensor computed the metrics.
        monkeypatch.setenv("DAGSTER_HOME", env["DAGSTER_HOME"])
        with dg.DagsterInstance.get() as instance:
            # Any status: the metrics run writes its points before its checks end the run.
            runs = instance.get_runs()
            by_job = {}
            for run in runs:
                by_job.setdefault(run.job_name, []).append(run)
            ingested = {r.tags["dagster/partition"] for r in by_job["hourly_ingest"]}
            assert {hour_key(hour), hour_key(hour + ONE_HOUR)} <= ingested
            assert all(
                r.tags.get("dagster/schedule_name") == "hourly_ingest_schedule"
                or "expo/late_hour" in r.tags
                for r in by_job["hourly_ingest"]
            )
            assert hour_key(hour) in {r.tags["dagster/partition"] for r in by_job["hourly_metrics"]}
        supervisor = _sensor_ticks(dagster_port, "streaming_supervisor")
        # 3. The merged view shows the batch points where both layers have one.
        merged = _metrics(env, iso, "merged")
        assert {k: v for k, v in merged.items() if k[0] in EXPERIMENT_METRICS} == {
            k[:4]: v for k, v in batch.items()
        }
        # 4. Speed equals batch for the finished hour, but for the visitors_24h sketches.
        assert drift.compared
        for metric, value in drift.drift.items():
            assert value <= ALLOWED_ERROR.get(metric, 0.0), (metric, value, drift.worst_keys)
        # 5. The supervisor's ticks are healthy.
        # A tick still in progress (STARTED) has no outcome yet: judge the finished ones.
        finished = [t for t in supervisor if t["status"] != "STARTED"][:3]
        assert finished, f"the streaming supervisor has not finished a tick: {supervisor}"
        assert all(t["status"] == "SKIPPED" for t in finished), supervisor
        assert all(t["skipReason"].startswith("ok: healthy") for t in finished), supervisor
        # 6. Every socket the platform listens on (ZooKeeper, the broker, the stream's driver,
        # block manager and UI, Dagster's webserver and code servers) is on loopback.
        sockets = listening_sockets([s.pid for s in running_services(tmp_path / "services")])
        ports = {port for *_, port in sockets}
        configured = [env["EXPO_KAFKA_BOOTSTRAP"], env["EXPO_ZOOKEEPER"]]
        wanted = {dagster_port, int(env["EXPO_STREAM_UI_PORT"]), int(env["EXPO_CONNECT_PORT"])}
        wanted.add(int(env["EXPO_DASHBOARD_PORT"]))
        assert wanted | {int(a.rsplit(":", 1)[1]) for a in configured} <= ports, sockets
        assert exposed(sockets) == []
        # 7. Dagster's runs ran on the Spark Connect server: its UI lists their queries.
        assert spark_sql_executions(int(env["EXPO_CONNECT_UI_PORT"])) > 50
    finally:
        down = _local("down", env, dagster_port)
    assert all(f"{name} pid=" in down for name in PLATFORM_NAMES), down
    assert (
        recorded_service(tmp_path / "services", "stream") is None
        or not recorded_service(tmp_path / "services", "stream").alive()
    )
