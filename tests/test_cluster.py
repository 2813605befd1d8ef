"""A real distributed engine: a Spark standalone master and worker, started from the pyspark
wheel, run hours of the batch assets and the streaming app under the supervisor.

The worker's 2 cores go to one application at a time: the batch app, then the stream.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import dagster as dg
import pytest

from bench import duckdb_peer
from bench.batch import compare
from definitions import build_defs
from expo_platform.core.hours import HOUR_MS, hour_iso, hour_label, hour_start_ms, parse_hour
from expo_platform.devtools.generator import GeneratorConfig, iter_lines, write_landing
from expo_platform.devtools.producer import produce_lines
from expo_platform.errors import ExpoError, SettingsError
from expo_platform.ops import processes, spark_cluster
from expo_platform.ops.supervision import (
    STREAM_APP_NAME,
    LocalLauncher,
    SparkSubmitLauncher,
    State,
    Thresholds,
    decide,
    master_app,
    observe_master,
    stream_launcher,
)
from expo_platform.serving.store import MetricStore
from expo_platform.settings import load_settings
from expo_platform.speed.offsets import ZkOffsets
from tests.fixtures_services import new_topic
from tests.helpers import stream_env, supervisor_tick, wait

PROJECT = Path(__file__).resolve().parent.parent
# Captured from a real master: a finished batch app (`expo`), a killed streaming app and the
# streaming app that replaced it, running.
MASTER_JSON = Path(__file__).with_name("data") / "spark_master.json"
CORES, MEMORY = 2, "2g"
BATCH_HOUR = parse_hour("2026-03-02T12")


def _lines(start: str, seed: int) -> list[str]:
    config = GeneratorConfig(start=parse_hour(start), hours=1, visitors=60, seed=seed)
    return [line for _, line, _ in iter_lines(config)]


# -- the master's JSON, without a cluster ----------------------------------------------------


def test_the_streaming_app_is_found_in_the_masters_json():
    status = json.loads(MASTER_JSON.read_text())
    assert master_app(status) == ("app-20261125215201-0002", True)
    # A killed app moves to the completed ones; the newest of those is reported, not running.
    finished = {**status, "activeapps": []}
    assert master_app(finished) == ("app-20261125215054-0001", False)
    assert master_app({**finished, "completedapps": []}) == (None, False)
    assert master_app(status, "expo")[1] is False  # the batch app finished
    assert spark_cluster.worker_alive(status, 35385) and not spark_cluster.worker_alive(
        status, 8081
    )


def test_the_app_name_the_supervisor_looks_for_is_the_streams():
    from expo_platform.speed.app import stream_spark_config

    assert stream_spark_config(load_settings({}))["spark.app.name"] == STREAM_APP_NAME


def _serve(documents: dict[str, object]) -> tuple[ThreadingHTTPServer, str]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            if self.path not in documents:
                self.send_error(404)
                return
            body = json.dumps(documents[self.path]).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"127.0.0.1:{server.server_address[1]}"


def test_observe_master_takes_the_app_from_the_master_and_the_figures_from_the_driver():
    status = json.loads(MASTER_JSON.read_text())
    app = "app-20261125215201-0002"
    api = f"/api/v1/applications/{app}"
    now = 1_795_643_600.0
    driver_docs = {
        f"{api}/jobs?status=failed": [],
        f"{api}/jobs?status=succeeded": [{"completionTime": "2026-11-25T21:53:00.000GMT"}],
        f"{api}/stages?status=active": [],
        "/metrics/json": {
            "gauges": {
                "expo.driver.spark.streaming.expo_speed.inputRate-total": {"value": 12.5},
                "expo.driver.spark.streaming.expo_speed.processingRate-total": {"value": 40.0},
                "expo.driver.spark.streaming.expo_speed.latency": {"value": 900},
            }
        },
    }
    master, master_ui = _serve({"/json/": status})
    driver, driver_ui = _serve(driver_docs)
    try:
        seen = observe_master(master_ui, driver_ui, now)
        assert (seen.ui_reachable, seen.app_id, seen.app_running) == (True, app, True)
        assert (seen.succeeded_jobs, seen.failed_jobs, seen.input_rate) == (1, 0, 12.5)
        assert seen.latency_ms == 900 and not seen.error
        assert decide(seen, Thresholds.of(load_settings({})), State(), now).action == "ok"

        # The driver's UI gone while the master still lists the app: running, with the error.
        driver.shutdown()
        driver.server_close()
        seen = observe_master(master_ui, driver_ui, now)
        assert seen.app_running and seen.error and seen.input_rate is None

        # The app gone from the active ones: restart.
        finished = {**status, "activeapps": []}
        master.shutdown()
        master.server_close()
        master, master_ui = _serve({"/json/": finished})
        seen = observe_master(master_ui, driver_ui, now)
        assert (seen.app_id, seen.app_running) == ("app-20261125215054-0001", False)
        assert decide(seen, Thresholds.of(load_settings({})), State(), now).action == "restart"
    finally:
        master.shutdown()
        master.server_close()
    # An unreachable master while the app's process runs: alert, do not start a second app.
    seen = observe_master(master_ui, driver_ui, now)
    seen.process_alive = True
    assert not seen.ui_reachable and "no answer" in seen.error
    assert decide(seen, Thresholds.of(load_settings({})), State(), now).action == "alert"


def test_the_launcher_setting_selects_spark_submit(tmp_path):
    local = load_settings({"EXPO_SERVICES_DIR": str(tmp_path)})
    assert type(stream_launcher(local)) is LocalLauncher
    env = {
        "EXPO_SERVICES_DIR": str(tmp_path),
        "EXPO_STREAM_LAUNCHER": "spark-submit",
        "EXPO_SPARK_MASTER": "spark://127.0.0.1:7077",
    }
    launcher = stream_launcher(load_settings(env))
    assert isinstance(launcher, SparkSubmitLauncher)
    argv = launcher.argv()
    assert Path(argv[0]).name == "spark-submit" and Path(argv[0]).is_file()
    assert argv[1:5] == ["--master", "spark://127.0.0.1:7077", "--deploy-mode", "client"]
    assert argv[-2:] == [str(PROJECT / "expo_platform" / "cli.py"), "stream"]
    assert not launcher.alive()  # nothing recorded in the services folder
    with pytest.raises(ExpoError, match="needs EXPO_SPARK_MASTER=spark://"):
        SparkSubmitLauncher(local).argv()
    with pytest.raises(SettingsError, match="EXPO_CLUSTER_WORKER_MEMORY"):
        load_settings({"EXPO_CLUSTER_WORKER_MEMORY": "lots"})


# -- a real cluster --------------------------------------------------------------------------


@dataclass
class Cluster:
    url: str  # spark://127.0.0.1:port
    ui: str  # host:port of the master's web UI
    folder: Path
    master: processes.Service
    worker: processes.Service

    def status(self) -> dict:
        status = spark_cluster.master_status(self.ui)
        assert status is not None, "the master's JSON does not answer"
        return status

    def apps(self, name: str, key: str) -> list[dict]:
        return [a for a in self.status()[key] if a["name"] == name]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[Cluster]:
    """A standalone master and one worker (2 cores, 2g) on free loopback ports."""
    folder = tmp_path_factory.mktemp("cluster")
    port, ui_port, worker_ui = (processes.free_port() for _ in range(3))
    master = spark_cluster.start_master(folder, port, ui_port)
    try:
        worker = spark_cluster.start_worker(folder, port, ui_port, CORES, MEMORY, worker_ui)
    except ExpoError:
        master.stop()
        raise
    found = processes.recorded_service(folder, spark_cluster.SPARK_WORKER)
    assert found is not None and found.alive()  # the java command line, after spark-class
    assert found.argv[0].endswith("java") and spark_cluster.WORKER_CLASS in found.argv
    yield Cluster(spark_cluster.master_url(port), f"127.0.0.1:{ui_port}", folder, master, worker)
    stopped = processes.stop_from_pidfiles(folder, names=spark_cluster.CLUSTER_NAMES)
    assert [s.name for s in stopped] == [spark_cluster.SPARK_WORKER, spark_cluster.SPARK_MASTER]
    assert not list(folder.glob("*.pid"))


def _driver_env(cluster: Cluster) -> dict[str, str]:
    return {
        "EXPO_SPARK_MASTER": cluster.url,
        "SPARK_LOCAL_IP": "127.0.0.1",  # the driver on loopback, like the cluster
        "PYSPARK_PYTHON": sys.executable,
        "PYSPARK_DRIVER_PYTHON": sys.executable,
    }


@pytest.mark.slow
def test_batch_assets_materialize_on_the_cluster(cluster, tmp_path):
    lake = tmp_path / "lake"
    store_url = f"sqlite:///{tmp_path / 'metrics.sqlite'}"
    config = GeneratorConfig(start=BATCH_HOUR, hours=2, visitors=300, seed=11, dirty_fraction=0.02)
    write_landing(config, lake / "landing" / "beacons")
    first, last = BATCH_HOUR, BATCH_HOUR + timedelta(hours=1)
    env = {
        **os.environ,
        **_driver_env(cluster),
        "EXPO_LAKE": str(lake),
        "EXPO_METRIC_STORE": store_url,
        "DAGSTER_HOME": str(tmp_path / "dagster"),
    }
    env.pop("EXPO_SPARK_CONF", None)
    before = {a["id"] for a in cluster.status()["completedapps"]}
    expo = [sys.executable, str(Path(sys.executable).parent / "expo")]
    started = time.monotonic()
    # `expo batch` materializes the hourly asset jobs through Dagster: ingest of 12, 13 and
    # 14 (empty), metrics of 12 and 13.
    run = subprocess.run(
        [*expo, "batch", "--from", hour_label(first), "--to", hour_label(last)],
        env=env,
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    seconds = time.monotonic() - started
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"on {cluster.url}" in run.stdout
    assert "3 hours ingested, metrics of 2 hours written" in run.stdout

    apps = [a for a in cluster.status()["completedapps"] if a["id"] not in before]
    assert [(a["name"], a["state"]) for a in apps] == [("expo", "FINISHED")], apps
    assert apps[0]["cores"] == CORES
    # Its executor ran in the worker's work folder, not in the driver.
    assert (cluster.folder / spark_cluster.SPARK_WORKER / "work" / apps[0]["id"]).is_dir()

    # The metrics equal those of the independent DuckDB implementation on the same files,
    # which equals the local-mode batch layer (tests/test_bench.py).
    files = sorted((lake / "landing" / "beacons").glob("hour=*/*.json"))
    with MetricStore(store_url) as store:
        for hour in (first, last):
            one = hour_iso(hour)
            points = store.values(layer="batch", hour_from=one, hour_to=one, by_hour=False)
            expected, _ = duckdb_peer.hour_metrics(files, hour_start_ms(hour) // HOUR_MS)
            assert len(points) > 100 and compare(points, expected) == []
        totals = {
            p.hour: p.value
            for p in store.query(layer="batch", quality=True, metrics=["beacons_total"])
        }
    for hour, path in zip((first, last), files, strict=True):
        lines = sum(1 for line in path.read_text().splitlines() if line.strip())
        assert totals[hour_iso(hour)] == lines
    steps = [line for line in run.stdout.splitlines() if line.startswith("[")]
    print(f"batch of 2 hours on the cluster: {seconds:.1f}s", *steps, sep="\n  ")


@pytest.mark.slow
def test_the_supervisor_restarts_the_streaming_app_on_the_cluster(
    cluster,
    tmp_path,
    monkeypatch,
    kafka,
    zookeeper,
    mailbox,
    webhook,
):
    topic = new_topic(kafka, "cluster", 2)
    first_lines = _lines("2026-03-02T10", seed=3)
    later_lines = _lines("2026-03-02T11", seed=4)
    produce_lines(kafka.address, topic, first_lines)
    env = {
        **_driver_env(cluster),
        "EXPO_STREAM_LAUNCHER": "spark-submit",
        "EXPO_SPARK_MASTER_UI": cluster.ui,
        **stream_env(tmp_path, kafka, zookeeper, topic, mailbox, webhook),
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("EXPO_SPARK_CONF", raising=False)
    settings = load_settings()
    settings.lake.root.mkdir()
    defs = build_defs(settings)
    launcher = defs.resources["stream_launcher"].launcher(settings)
    assert isinstance(launcher, SparkSubmitLauncher)

    def committed() -> int:
        with ZkOffsets(settings.stream.zookeeper, settings.stream.consumer) as zk:
            return sum(zk.read(topic).values())

    def running() -> list[str]:
        return [a["id"] for a in cluster.apps(STREAM_APP_NAME, "activeapps")]

    started = time.monotonic()
    app = launcher.start()
    try:
        assert app.argv[0].endswith("java") and "org.apache.spark.deploy.SparkSubmit" in app.argv
        wait(lambda: committed() == len(first_lines), 180, "the app to commit every offset")
        caught_up_s = time.monotonic() - started
        [first_app] = running()

        with dg.DagsterInstance.ephemeral() as instance:
            result, cursor = supervisor_tick(defs, instance)
            assert isinstance(result, dg.SkipReason) and result.skip_message.startswith("ok")
            seen = json.loads(cursor)["seen"]
            assert (seen["app_id"], seen["app_running"], seen["lag"]) == (first_app, True, 0)
            assert seen["succeeded_jobs"] > 0 and seen["failed_jobs"] == 0

            # A crash: kill -9 the driver (spark-submit's JVM and its Python process).
            os.killpg(launcher.recorded().pid, signal.SIGKILL)
            wait(lambda: not launcher.alive() and not running(), 60, "the master to drop it")
            assert first_app in [a["id"] for a in cluster.apps(STREAM_APP_NAME, "completedapps")]
            produce_lines(kafka.address, topic, later_lines)  # arrives while the app is down

            request, cursor = supervisor_tick(defs, instance, cursor)
            assert isinstance(request, dg.RunRequest), request
            assert "absent or finished" in request.tags["expo/reasons"]
            assert json.loads(cursor)["seen"]["app_id"] == first_app

            restart_started = time.monotonic()
            job = defs.resolve_job_def("restart_streaming")
            assert job.execute_in_process(instance=instance, tags=request.tags).success
            restart_s = time.monotonic() - restart_started
            assert launcher.alive()
            [second_app] = running()
            assert second_app != first_app
            mailbox.wait_for(1)
            assert mailbox.subjects() == ["[expo warning] streaming app restarted"]

            # The new app resumes from the checkpoint and ZooKeeper offsets, on the cluster.
            total = len(first_lines) + len(later_lines)
            wait(lambda: committed() == total, 180, "the new app to catch up")
            result, cursor = supervisor_tick(defs, instance, cursor)
            assert isinstance(result, dg.SkipReason) and result.skip_message.startswith("ok")
            assert json.loads(cursor)["seen"]["app_id"] == second_app
    finally:
        stop_started = time.monotonic()
        was_running = launcher.stop(timeout=60)
        stop_s = time.monotonic() - stop_started
    # SIGTERM went to the Python driver: the micro-batch finished, then the JVM exited.
    assert was_running and not running()
    log_tail = app.log_file.read_text(errors="replace")[-5000:]
    assert "stream stopped (signal)" in log_tail
    print(
        f"stream on the cluster: caught up {caught_up_s:.0f}s after start, restart job "
        f"{restart_s:.0f}s, graceful stop {stop_s:.1f}s"
    )
