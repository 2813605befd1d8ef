"""`dagster dev -w workspace.yaml` for real: the asset graph, and a backfill of two hours."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from expo_platform.generator import GeneratorConfig, write_landing
from expo_platform.hours import parse_hour
from expo_platform.store import MetricStore

PROJECT = Path(__file__).resolve().parent.parent
ASSETS = ["beacons", "beacon_rejects", "data_quality", "sessions", "experiment_metrics"]
DAILY_ASSETS = ["visitor_daily", "experiment_scorecards", "trend_reports"]
LAUNCH = """mutation($p: LaunchBackfillParams!) { launchPartitionBackfill(backfillParams: $p) {
  __typename ... on LaunchBackfillSuccess { backfillId } ... on PythonError { message } } }"""
STATUS = """query($id: String!) { partitionBackfillOrError(backfillId: $id) {
  ... on PartitionBackfill { status } }
  runsOrError(filter: {tags: [{key: "dagster/backfill", value: $id}]}) {
    ... on Runs { results { status } } } }"""
TERMINAL_RUN = {"SUCCESS", "FAILURE", "CANCELED"}


def graphql(port: int, query: str, variables: dict | None = None) -> dict:
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql", body, {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)["data"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def dagster_dev(tmp_path):
    """`dagster dev` on a free port over a lake with two generated hours."""
    lake, home = tmp_path / "lake", tmp_path / "dagster_home"
    write_landing(
        GeneratorConfig(start=parse_hour("2026-03-02T00"), hours=2, visitors=150, seed=5),
        lake / "landing" / "beacons",
    )
    home.mkdir()
    shutil.copy(PROJECT / "dagster.yaml", home / "dagster.yaml")
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXPO_")}
    env.update(EXPO_LAKE=str(lake), DAGSTER_HOME=str(home), PYSPARK_PYTHON=sys.executable)
    port = free_port()
    log = (tmp_path / "dagster-dev.log").open("w")
    dagster = Path(sys.executable).parent / "dagster"
    process = subprocess.Popen(
        [str(dagster), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
        cwd=PROJECT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                graphql(port, "{ version }")
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    output = (tmp_path / "dagster-dev.log").read_text()[-3000:]
                    pytest.fail(f"dagster dev did not start:\n{output}")
                time.sleep(1)
        yield port, lake
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        log.close()


@pytest.mark.slow
def test_asset_graph_and_a_two_hour_backfill(dagster_dev):
    port, lake = dagster_dev
    nodes = graphql(port, "{ assetNodes { assetKey { path } } }")["assetNodes"]
    assert sorted(n["assetKey"]["path"][0] for n in nodes) == sorted(ASSETS + DAILY_ASSETS)

    launched = graphql(
        port,
        LAUNCH,
        {
            "p": {
                "partitionNames": ["2026-03-02-00", "2026-03-02-01"],
                "assetSelection": [{"path": [name]} for name in ASSETS],
                "fromFailure": False,
            }
        },
    )["launchPartitionBackfill"]
    assert launched["__typename"] == "LaunchBackfillSuccess", launched
    deadline = time.monotonic() + 600
    while True:
        status = graphql(port, STATUS, {"id": launched["backfillId"]})
        backfill = status["partitionBackfillOrError"]["status"]
        runs = [r["status"] for r in status["runsOrError"]["results"]]
        # The daemon's hourly schedule queues its own runs meanwhile; only the
        # backfill's runs (tagged with its id) are waited for and judged.
        done = backfill in ("COMPLETED", "COMPLETED_SUCCESS", "FAILED", "COMPLETED_FAILED")
        if done and all(r in TERMINAL_RUN for r in runs):
            break
        assert time.monotonic() < deadline, f"backfill still {backfill}, runs {runs}"
        time.sleep(3)
    assert backfill in ("COMPLETED", "COMPLETED_SUCCESS"), runs
    assert runs and all(r == "SUCCESS" for r in runs), runs

    with MetricStore(f"sqlite:///{lake / 'metrics.sqlite'}") as store:
        hours = {p.hour for p in store.query(layer="batch")}
        quality = {p.hour for p in store.query(layer="batch", quality=True)}
    assert hours == {"2026-03-02T00:00:00Z", "2026-03-02T01:00:00Z"}
    # The daemon's hourly schedule may also ingest today's (empty) hours meanwhile.
    assert {h for h in quality if h.startswith("2026-03-02")} == hours
