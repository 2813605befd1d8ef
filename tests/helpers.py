"""Small helpers that several test modules share: waiting, a supervisor tick, the browser."""

from __future__ import annotations

import contextlib
import json
import os
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import pytest

from expo_platform.settings import Settings, load_settings

PROJECT = Path(__file__).resolve().parent.parent
# Screenshots and other files a reviewer may want to look at after a run.
ARTIFACTS = Path(os.environ.get("EXPO_TEST_ARTIFACTS") or PROJECT / "test-artifacts")
CHROMIUM = Path("/usr/bin/chromium")  # Debian's chromium, driven by Playwright
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def wait(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `condition` every second; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(1)


def landed_lines(landing_dir: Path, files: str = "*.json") -> list[str]:
    """The lines of the landing zone's files named like `files`, in path order."""
    return [
        line
        for path in sorted(landing_dir.glob(f"hour=*/{files}"))
        for line in path.read_text().splitlines()
    ]


def supervisor_tick(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    cursor=None,
    events: list | None = None,
    sensor: str = "streaming_supervisor",
):
    """Evaluate one tick of a supervisor sensor with the resources of `defs`: its skip
    reason or run request and its cursor; the asset events it records go to `events`."""
    names = ("alerts", "stream_launcher", "settings")
    context = dg.build_sensor_context(
        instance=instance, cursor=cursor, resources={n: defs.resources[n] for n in names}
    )
    result = defs.resolve_sensor_def(sensor)(context)
    if events is not None:
        events.extend(result.asset_events)
    outcome = result.run_requests[0] if result.run_requests else result.skip_reason
    return outcome, context.cursor


def stream_env(tmp_path: Path, kafka, zookeeper, topic: str, mailbox, webhook) -> dict[str, str]:
    """Settings of a streaming app under the supervisor: its own lake, store, services dir,
    topic and consumer, a 5 s trigger, a free UI port, and alerts to the test's receivers."""
    from expo_platform.ops.processes import free_port

    return {
        "EXPO_LAKE": str(tmp_path / "lake"),
        "EXPO_METRIC_STORE": f"sqlite:///{tmp_path / 'metrics.sqlite'}",
        "EXPO_SERVICES_DIR": str(tmp_path / "services"),
        "EXPO_KAFKA_BOOTSTRAP": kafka.address,
        "EXPO_KAFKA_TOPIC": topic,
        "EXPO_ZOOKEEPER": zookeeper.address,
        "EXPO_STREAM_CONSUMER": f"c-{topic}",
        "EXPO_KAFKA_END_OFFSETS": "probe",
        "EXPO_STREAM_TRIGGER_SECONDS": "5",
        "EXPO_STREAM_UI_PORT": str(free_port()),
        "EXPO_ALERT_SMTP": mailbox.address,
        "EXPO_ALERT_EMAIL_TO": "oncall@example.com",
        "EXPO_ALERT_WEBHOOK_URL": webhook.url,
    }


def lake_settings(lake: Path, dagster_home: Path, store: Path | None = None) -> Settings:
    """Settings of a lake and Dagster home (and SQLite store: the lake's when None)."""
    environ = {"EXPO_LAKE": str(lake), "DAGSTER_HOME": str(dagster_home)}
    if store is not None:
        environ["EXPO_METRIC_STORE"] = f"sqlite:///{store}"
    return load_settings(environ)


def generated_lake(root: Path, spark_conf: dict, config) -> tuple[Settings, object]:
    """Settings of a fresh lake and store under `root`, with `config`'s traffic landed, and
    the generator's report of what it wrote."""
    from expo_platform.devtools.generator import write_landing

    settings = lake_settings(root / "lake", root / "dagster", root / "metrics.sqlite").replace(
        spark={"conf": spark_conf}, batch={"max_reject_rate": 0.5}
    )
    return settings, write_landing(config, settings.lake.landing_dir, progress=lambda *_: None)


def expo_batch(settings: Settings, first, last, popen: bool = False, **env: str):
    """`expo batch --from first --to last` over this lake and store, in a process of its own
    (a session of its own too, so a test can kill it whole): its CompletedProcess, or with
    `popen` the running Popen. `env` adds settings (EXPO_SPARK_REMOTE...)."""
    import subprocess
    import sys

    full = {k: v for k, v in os.environ.items() if not k.startswith("EXPO_")}
    full.update(
        EXPO_LAKE=str(settings.lake.root),
        EXPO_METRIC_STORE=settings.lake.metric_store,
        DAGSTER_HOME=str(settings.local.dagster_home),
        EXPO_MAX_REJECT_RATE="0.5",
        PYSPARK_PYTHON=sys.executable,
        **env,
    )
    argv = [sys.executable, "-m", "expo_platform.cli", "batch"]
    argv += ["--from", first.strftime("%Y-%m-%dT%H"), "--to", last.strftime("%Y-%m-%dT%H")]
    if popen:
        out = settings.lake.root.parent / "expo-batch.log"
        return subprocess.Popen(
            argv, cwd=PROJECT, env=full, stdout=out.open("ab"), stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    return subprocess.run(argv, cwd=PROJECT, env=full, capture_output=True, text=True, timeout=900)


def assert_store_equals_oracle(settings: Settings, first, last) -> None:
    """The batch layer's stored metrics of the hours first..last are the oracle's
    (`tests/reference.py`) from the landing files: the same keys, the same values."""
    from expo_platform.core.hours import hour_iso, hour_range
    from expo_platform.core.metrics import ALLOWED_ERROR
    from expo_platform.serving.store import MetricStore
    from tests import reference

    hours = {hour_iso(h) for h in hour_range(first, last)}
    counted = reference.load_counted(settings.lake.landing_dir)
    expected = {k: v for k, v in reference.hourly_metrics(counted).items() if k[4] in hours}
    with MetricStore(settings.lake.metric_store) as store:
        stored = store.values(layer="batch")
    assert {k[4] for k in stored} == hours and set(stored) == set(expected)
    for key, want in expected.items():
        allowed = ALLOWED_ERROR.get(key[0], 0.0)
        assert stored[key] == pytest.approx(want, rel=max(allowed, 1e-12), abs=1e-9), key


@contextmanager
def in_dagster_home(settings: Settings) -> Iterator[None]:
    """The environment a Dagster run of this lake sees: its home, lake and store."""
    from expo_platform.ops.dagster_home import prepare_dagster_home

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DAGSTER_HOME", str(settings.local.dagster_home))
        mp.setenv("EXPO_LAKE", str(settings.lake.root))
        mp.setenv("EXPO_METRIC_STORE", settings.lake.metric_store)
        prepare_dagster_home(settings, PROJECT)
        yield


LOOPBACK_ADDRESSES = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}


def listening_sockets(pids: list[int]) -> list[tuple[int, str, str, int]]:
    """(pid, process name, address, port) of every TCP socket listening in these processes
    and their descendants."""
    import psutil

    found = []
    processes = []
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            root = psutil.Process(pid)
            processes += [root, *root.children(recursive=True)]
    for process in {p.pid: p for p in processes}.values():
        with contextlib.suppress(psutil.NoSuchProcess):
            for conn in process.net_connections(kind="tcp"):
                if conn.status == psutil.CONN_LISTEN:
                    found.append((process.pid, process.name(), conn.laddr.ip, conn.laddr.port))
    return found


def exposed(sockets: list[tuple[int, str, str, int]]) -> list[tuple[int, str, str, int]]:
    """The sockets of `listening_sockets` that are reachable beyond loopback."""
    return [s for s in sockets if s[2] not in LOOPBACK_ADDRESSES]


def spark_sql_executions(ui_port: int) -> int:
    """How many SQL executions the one application of the Spark UI on `ui_port` lists."""
    ui = f"http://127.0.0.1:{ui_port}/api/v1/applications"
    with urllib.request.urlopen(ui, timeout=10) as response:
        (app,) = json.load(response)
    with urllib.request.urlopen(f"{ui}/{app['id']}/sql?length=100000", timeout=30) as response:
        return len(json.load(response))
