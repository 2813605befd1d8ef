"""The soak: the whole platform under `make up`'s own entry point, at a steady live rate, with
stream restarts injected through the supervisor's own restart job.

    make soak                                      # 30 minutes at 40 beacons/s
    make bench BENCH_ARGS="--only soak --soak-minutes 10 --soak-rate 40"

The platform runs in a temporary EXPO_HOME on free loopback ports (`expo_platform.ops.local
up`: ZooKeeper, the broker, the stream, live traffic, the Spark Connect server, Dagster and
the dashboard). Every `restart_every` minutes the soak launches Dagster's `restart_streaming`
job over GraphQL, as the supervisor's sensor does. Every SAMPLE_SECONDS it records the
stream's memory (RSS of its process tree), its state on disk and the Kafka lag. At the end
the traffic stops, the stream drains the topic, and the report gives:

- messages produced (the topic's end offsets) = landed lines + quarantined messages;
- the speed layer against a batch recomputation (`expo batch` on the warm Connect server) of
  every hour whose traffic is complete: the largest drift per metric;
- memory and state over time, and whether they stayed flat (the last third of the samples
  against the middle third);
- the restarts injected and survived.

Dagster's hourly schedule is stopped here: the batch recomputation is the soak's own, so
nothing else writes those hours meanwhile.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import psutil
import pyarrow.parquet as pq

from expo_platform.core.hours import ONE_HOUR, hour_iso, hour_key, hour_label, truncate_hour
from expo_platform.core.metrics import ALLOWED_ERROR
from expo_platform.ops import processes
from expo_platform.ops.supervision import kafka_lag
from expo_platform.serving.reconcile import reconcile_hour
from expo_platform.serving.store import MetricStore
from expo_platform.settings import load_settings
from expo_platform.speed.kafka_source import topic_end_offsets

PROJECT = Path(__file__).resolve().parent.parent
SAMPLE_SECONDS = 10.0
FLAT = 1.25  # the last third's median at most this times the middle third's
LAUNCH = """mutation($params: ExecutionParams!) { launchRun(executionParams: $params) {
  __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message } } }"""
RUN = """query($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }"""


def _graphql(port: int, query: str, variables: dict) -> dict:
    body = json.dumps({"query": query, "variables": variables}).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql", body, {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)["data"]


def _local(command: str, env: dict, dagster_port: int) -> str:
    argv = [sys.executable, "-m", "expo_platform.ops.local", command]
    done = subprocess.run(
        [*argv, "--dagster-port", str(dagster_port)],
        cwd=PROJECT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if done.returncode != 0:
        raise RuntimeError(f"ops.local {command} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def _tree_rss(pid: int) -> int:
    try:
        root = psutil.Process(pid)
        return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])
    except psutil.Error:
        return 0


def _du(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.exists() else 0


def _restart(dagster_port: int) -> str:
    """Launch the supervisor's restart job, as its sensor does; wait for its end."""
    params = {
        "selector": {
            "repositoryLocationName": "expo",
            "repositoryName": "__repository__",
            "jobName": "restart_streaming",
        },
        "executionMetadata": {"tags": [{"key": "expo/reasons", "value": '["soak: injected"]'}]},
    }
    launched = _graphql(dagster_port, LAUNCH, {"params": params})["launchRun"]
    if launched["__typename"] != "LaunchRunSuccess":
        return f"not launched: {launched}"
    run_id = launched["run"]["runId"]
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        status = _graphql(dagster_port, RUN, {"id": run_id})["runOrError"]["status"]
        if status in ("SUCCESS", "FAILURE", "CANCELED"):
            return status
        time.sleep(2)
    return "unfinished"


def _landed_and_quarantined(lake: Path) -> tuple[int, int]:
    landed = 0
    for path in (lake / "landing" / "beacons").glob("hour=*/stream-*.json"):
        with path.open("rb") as lines:
            landed += sum(1 for line in lines if line.strip())
    folders = (lake / "stream" / "quarantine").glob("batch=*")
    quarantined = sum(pq.read_metadata(p).num_rows for f in folders for p in f.glob("*.parquet"))
    return landed, quarantined


def _flat(values: list[float]) -> tuple[float, float, bool]:
    """Medians of the middle and last thirds, and whether the last is within FLAT of it."""
    third = max(1, len(values) // 3)
    middle = statistics.median(values[third : 2 * third] or values)
    last = statistics.median(values[2 * third :] or values)
    return middle, last, last <= FLAT * max(middle, 1.0)


def run(minutes: float, rate: float, restart_every: float, progress: Callable[[str], None]) -> dict:
    """Run the soak; return its figures (see the module docstring)."""
    home = Path(tempfile.mkdtemp(prefix="expo-soak-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXPO_")}
    env.update(
        EXPO_HOME=str(home),
        EXPO_LAKE="lake",
        EXPO_SERVICES_DIR="services",
        DAGSTER_HOME=str(home / "dagster_home"),
        EXPO_KAFKA_BOOTSTRAP=f"127.0.0.1:{processes.free_port()}",
        EXPO_ZOOKEEPER=f"127.0.0.1:{processes.free_port()}",
        EXPO_STREAM_UI_PORT=str(processes.free_port()),
        EXPO_CONNECT_PORT=str(processes.free_port()),
        EXPO_CONNECT_UI_PORT=str(processes.free_port()),
        EXPO_DASHBOARD_PORT=str(processes.free_port()),
        EXPO_STREAM_TRIGGER_SECONDS="30",
        EXPO_UP_RATE=str(int(rate)),
        EXPO_HOURLY_SCHEDULE="stopped",
        PYSPARK_PYTHON=sys.executable,
    )
    started_at = datetime.now(UTC)
    # `up` sends the previous hour and 5 minutes before it first: a partial hour to start.
    partial = truncate_hour(started_at) - 2 * ONE_HOUR
    env["EXPO_PARTITIONS_START"] = hour_key(partial)
    settings = load_settings(env)
    lake, services = home / "lake", home / "services"
    dagster_port = processes.free_port()
    samples: list[dict] = []
    restarts: list[str] = []
    progress(f"soak: {minutes:g} min at {rate:g}/s under {home}")
    try:
        _local("up", env, dagster_port)
        began = time.monotonic()
        next_restart = began + restart_every * 60
        while (elapsed := time.monotonic() - began) < minutes * 60:
            stream = processes.recorded_service(services, processes.STREAM)
            samples.append(
                {
                    "s": round(elapsed),
                    "rss_mb": round(_tree_rss(stream.pid) / 2**20) if stream else 0,
                    "checkpoint_kb": _du(lake / "stream" / "checkpoint") // 1024,
                    "sessions_kb": _du(lake / "stream" / "sessions") // 1024,
                    "lag": kafka_lag(settings),
                }
            )
            if time.monotonic() >= next_restart:
                restarts.append(_restart(dagster_port))
                progress(f"soak: restart {len(restarts)} through restart_streaming: {restarts[-1]}")
                next_restart = time.monotonic() + restart_every * 60
            if len(samples) % 6 == 0:
                last = samples[-1]
                progress(
                    f"soak: {elapsed / 60:.1f} min, stream {last['rss_mb']} MB, "
                    f"lag {last['lag']:,}, sessions {last['sessions_kb']:,} KB"
                )
            time.sleep(SAMPLE_SECONDS)
        processes.stop_from_pidfiles(services, names=[processes.GENERATOR])
        stopped_at = datetime.now(UTC)
        deadline = time.monotonic() + 600
        while kafka_lag(settings) > 0 and time.monotonic() < deadline:
            time.sleep(5)
        stream = processes.recorded_service(services, processes.STREAM)
        alive = bool(stream and stream.alive())
        produced = sum(topic_end_offsets(settings).values())
        landed, quarantined = _landed_and_quarantined(lake)
        # The batch layer starts with the partial hour (visits carry across hours); the
        # hours compared are the complete ones, up to the last that ended before traffic
        # stopped.
        last = truncate_hour(stopped_at) - ONE_HOUR
        drift = _reconcile(env, settings, partial, last, progress)
    finally:
        _local("down", env, dagster_port)
    rss = [s["rss_mb"] for s in samples if s["rss_mb"]]
    sessions = [s["sessions_kb"] for s in samples]
    rss_mid, rss_last, rss_flat = _flat(rss) if rss else (0, 0, False)
    ses_mid, ses_last, ses_flat = _flat(sessions) if sessions else (0, 0, False)
    return {
        "soak_minutes": minutes,
        "soak_rate": rate,
        "soak_messages_produced": produced,
        "soak_landed": landed,
        "soak_quarantined": quarantined,
        "soak_produced_equals_landed_plus_quarantined": produced == landed + quarantined,
        "soak_restarts_injected": len(restarts),
        "soak_restarts_survived": sum(r == "SUCCESS" for r in restarts) if alive else 0,
        "soak_stream_alive_at_end": alive,
        "soak_hours_reconciled": len(drift),
        "soak_speed_equals_batch": all(
            v <= ALLOWED_ERROR.get(m, 0.0) for d in drift.values() for m, v in d.items()
        )
        and bool(drift),
        "soak_stream_rss_mb_middle_last": f"{rss_mid:.0f}/{rss_last:.0f}",
        "soak_stream_rss_flat": rss_flat,
        "soak_sessions_kb_middle_last": f"{ses_mid:.0f}/{ses_last:.0f}",
        "soak_sessions_flat": ses_flat,
        "soak_samples": samples,
        "soak_drift": drift,
    }


def _reconcile(env: dict, settings, first: datetime, last: datetime, progress) -> dict:
    """`expo batch` of first..last on the warm Connect server, then the drift of each
    complete hour after `first`."""
    if last <= first:
        return {}
    remote = f"sc://127.0.0.1:{env['EXPO_CONNECT_PORT']}"
    argv = [sys.executable, "-m", "expo_platform.cli", "batch"]
    argv += ["--from", hour_label(first), "--to", hour_label(last)]
    progress(f"soak: expo batch {hour_label(first)}..{hour_label(last)} on {remote}")
    done = subprocess.run(
        argv,
        cwd=PROJECT,
        env={**env, "EXPO_SPARK_REMOTE": remote, "EXPO_MAX_REJECT_RATE": "0.5"},
        capture_output=True,
        text=True,
        timeout=3600,
    )
    if done.returncode != 0:
        progress(f"soak: expo batch failed: {done.stderr.strip().splitlines()[-1:]}")
        return {}
    drift = {}
    with MetricStore(settings.lake.metric_store) as store:
        hour = first + ONE_HOUR  # the first hour is partial (in both layers alike)
        while hour <= last:
            found = reconcile_hour(store, hour_iso(hour), 0.02)
            if found.compared:
                drift[hour_iso(hour)] = {m: round(v, 6) for m, v in found.drift.items()}
            hour += ONE_HOUR
    return drift
