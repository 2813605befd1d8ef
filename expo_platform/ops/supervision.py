"""Supervising the streaming app: observe it through the Spark UI REST API, decide, launch.

`observe` reads what a tick needs (the application, its jobs of the last 5 minutes, the
longest running task, the streaming gauges of `/metrics/json`) and the Kafka lag (end
offsets minus the ZooKeeper offsets); with a standalone master's UI configured, the app
itself comes from the master's JSON. `decide` is a pure function of that observation, the
thresholds and the state kept between ticks (the sensor's cursor). The launchers start and
stop the app as a detached process recorded by pid files: `LocalLauncher` runs `expo
stream`, `SparkSubmitLauncher` submits it to the standalone master.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

from expo_platform.errors import ExpoError
from expo_platform.ops import processes, spark_cluster
from expo_platform.ops.connect import start_connect
from expo_platform.settings import LOOPBACK, Settings, path_env

log = logging.getLogger("expo_platform.ops.supervision")

JOB_WINDOW_S = 300  # failed against succeeded jobs over the last 5 minutes
REALERT_S = 900  # the same alert again only after 15 minutes
HTTP_TIMEOUT_S = 5.0
PORT_RELEASE_S = 60.0  # how long a restart waits for the old app's UI port
GAUGE_PREFIX = "expo.driver.spark.streaming.expo_speed."  # spark.metrics.namespace=expo
STREAM_APP_NAME = "expo-stream"  # spark.app.name of the streaming app (stream_spark_config)


@dataclass(frozen=True)
class Thresholds:
    """When the app counts as unhealthy, and how often it may be restarted."""

    stuck_task_s: float
    max_lag: int
    slow_ticks: int
    trigger_s: float
    restarts_per_hour: int

    @classmethod
    def of(cls, settings: Settings) -> Thresholds:
        """The supervisor's thresholds from the settings."""
        supervisor = settings.supervisor
        return cls(
            stuck_task_s=supervisor.stuck_task_seconds,
            max_lag=supervisor.max_kafka_lag,
            slow_ticks=supervisor.slow_ticks,
            trigger_s=settings.stream.trigger_seconds,
            restarts_per_hour=supervisor.restarts_per_hour,
        )


@dataclass
class Observation:
    """What one tick saw."""

    ui_reachable: bool = False
    app_id: str | None = None
    app_running: bool = False
    failed_jobs: int = 0
    succeeded_jobs: int = 0
    longest_task_s: float = 0.0
    lag: int | None = None
    input_rate: float | None = None
    processing_rate: float | None = None
    latency_ms: float | None = None
    process_alive: bool | None = None  # the launcher's view; None when it has no record
    error: str = ""


@dataclass(frozen=True)
class SpeedFreshness:
    """How far the speed layer's metrics are behind, from its newest progress record."""

    last_batch: str | None = None  # "<epoch>-<batch>" of the newest finished micro-batch
    newest_event_ms: int | None = None  # the newest event time its metrics cover
    written_ms: int | None = None  # when that batch's metrics were in the store
    messages: int = 0  # messages of that batch
    batch_seconds: float = 0.0

    def behind_minutes(self, now: float) -> float | None:
        """Minutes from the newest event time in the speed metrics to `now` (epoch s)."""
        if self.newest_event_ms is None:
            return None
        return round(max(0.0, now * 1000 - self.newest_event_ms) / 60_000, 2)

    def stale(self, now: float, limit_minutes: float) -> bool:
        """No speed metrics at all, or metrics more than `limit_minutes` behind the clock."""
        behind = self.behind_minutes(now)
        return behind is None or behind > limit_minutes


def speed_freshness(settings: Settings) -> SpeedFreshness:
    """The newest micro-batch's progress record (`<stream dir>/progress/<key>.json`)."""
    records = sorted((settings.stream_dir / "progress").glob("*.json"))
    if not records:
        return SpeedFreshness()
    try:
        data = json.loads(records[-1].read_text())
    except (OSError, ValueError):
        return SpeedFreshness()  # being replaced: the next tick reads it
    return SpeedFreshness(
        last_batch=data.get("key"),
        newest_event_ms=data.get("max_ts"),
        written_ms=data.get("done_ms") or None,
        messages=data.get("messages", 0),
        batch_seconds=data.get("batch_seconds", 0.0),
    )


@dataclass
class State:
    """Kept between ticks in the sensor's cursor."""

    slow_ticks: int = 0
    restarts: list[float] = field(default_factory=list)  # epoch seconds, last hour
    alerted: str = ""  # the reasons of the last alert sent
    alerted_at: float = 0.0

    @classmethod
    def from_cursor(cls, cursor: str | None) -> State:
        if not cursor:
            return cls()
        data = json.loads(cursor)
        return cls(
            slow_ticks=data.get("slow_ticks", 0),
            restarts=data.get("restarts", []),
            alerted=data.get("alerted", ""),
            alerted_at=data.get("alerted_at", 0.0),
        )


@dataclass
class Decision:
    """`ok`, `restart`, or `alert` (unhealthy but out of restarts, or the UI unreachable
    while the app's process runs), with the reasons and the state for the next tick."""

    action: str
    reasons: list[str]
    state: State
    observation: Observation
    notify: bool = False  # an alert to send: not the same one as within the last 15 minutes

    def cursor(self) -> str:
        """The state, plus the decision and its figures for people reading the cursor."""
        return json.dumps(
            {
                **asdict(self.state),
                "action": self.action,
                "reasons": self.reasons,
                "seen": asdict(self.observation),
            },
            sort_keys=True,
        )

    def summary(self) -> str:
        o = self.observation
        figures = (
            f"app={o.app_id} running={o.app_running} jobs failed/succeeded="
            f"{o.failed_jobs}/{o.succeeded_jobs} longest_task={o.longest_task_s:.0f}s "
            f"lag={o.lag} input={o.input_rate} processed={o.processing_rate} "
            f"latency_ms={o.latency_ms} slow_ticks={self.state.slow_ticks}"
        )
        why = "; ".join(self.reasons) or "healthy"
        return f"{self.action}: {why} ({figures})"


def decide(
    obs: Observation,
    limits: Thresholds,
    before: State,
    now: float,
    subject: str = "the streaming app",
) -> Decision:
    """The supervisor's rules; see the module docstring. An alert is repeated only when its
    reasons change or 15 minutes have passed. `subject` names the app in the reasons."""
    decision = _decide(obs, limits, before, now, subject)
    if decision.action != "alert":
        return decision
    key = " ".join(r.split(":")[0] for r in decision.reasons)  # without the varying figures
    repeat = key == before.alerted and now - before.alerted_at < REALERT_S
    decision.notify = not repeat
    decision.state.alerted = key
    decision.state.alerted_at = before.alerted_at if repeat else now
    return decision


def _decide(
    obs: Observation, limits: Thresholds, before: State, now: float, subject: str
) -> Decision:
    restarts = [t for t in before.restarts if now - t < 3600]
    reasons: list[str] = []
    slow = 0
    if not obs.ui_reachable and obs.process_alive:
        # The process runs but cannot be seen: restarting blind could run two apps.
        reason = f"the Spark UI is unreachable while the process of {subject} runs: {obs.error}"
        return Decision("alert", [reason], State(0, restarts), obs)
    if not obs.ui_reachable or not obs.app_running:
        reasons.append(f"{subject} is absent or finished")
    else:
        if obs.failed_jobs > obs.succeeded_jobs:
            reasons.append(
                f"{obs.failed_jobs} failed against {obs.succeeded_jobs} succeeded jobs "
                f"in the last {JOB_WINDOW_S // 60} minutes"
            )
        if obs.longest_task_s > limits.stuck_task_s:
            reasons.append(f"a task has run {obs.longest_task_s:.0f}s (stuck)")
        if obs.lag is not None and obs.lag > limits.max_lag:
            reasons.append(f"Kafka lag {obs.lag:,} above {limits.max_lag:,}")
        behind = (
            obs.input_rate is not None
            and obs.processing_rate is not None
            and obs.processing_rate < obs.input_rate
        )
        late = obs.latency_ms is not None and obs.latency_ms > limits.trigger_s * 1000
        slow = before.slow_ticks + 1 if behind or late else 0
        if slow >= limits.slow_ticks:
            reasons.append(f"falling behind for {slow} ticks in a row")
    if not reasons:
        return Decision("ok", [], State(slow, restarts), obs)
    if len(restarts) >= limits.restarts_per_hour:
        reasons.append(f"restart budget of {limits.restarts_per_hour} per hour exhausted")
        return Decision("alert", reasons, State(slow, restarts), obs)
    return Decision("restart", reasons, State(0, [*restarts, now]), obs)


def _get(url: str) -> object:
    with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_S) as response:
        return json.load(response)


def _spark_time(text: str) -> float:
    """Epoch seconds of the REST API's `2026-11-25T17:55:00.123GMT`."""
    return datetime.strptime(text.replace("GMT", "+0000"), "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()


def observe_ui(ui: str, now: float) -> Observation:
    """The app, its jobs, tasks and gauges from the driver's Spark UI at `ui` (host:port)."""
    base = f"http://{ui}"
    obs = Observation()
    try:
        apps = _get(f"{base}/api/v1/applications")
    except (OSError, ValueError) as exc:
        obs.error = f"{base}: {exc}"
        return obs
    obs.ui_reachable = True
    if not apps:
        return obs
    app = apps[0]
    obs.app_id = app["id"]
    obs.app_running = not all(a.get("completed") for a in app.get("attempts", []))
    _driver_figures(base, obs, now)
    return obs


def master_app(status: dict, name: str = STREAM_APP_NAME) -> tuple[str | None, bool]:
    """The newest application called `name` in a standalone master's JSON, as (id, running):
    an active one (running, or waiting for cores) before a completed one; (None, False)
    when the master has none."""
    for key, running in (("activeapps", True), ("completedapps", False)):
        apps = [a for a in status.get(key) or [] if a.get("name") == name]
        if apps:
            return max(apps, key=lambda a: a.get("starttime", 0))["id"], running
    return None, False


def observe_master(master_ui: str, driver_ui: str, now: float) -> Observation:
    """The app from the standalone master's JSON at `master_ui`; its jobs, tasks and gauges
    from the driver's Spark UI at `driver_ui` while it runs."""
    obs = Observation()
    status = spark_cluster.master_status(master_ui, HTTP_TIMEOUT_S)
    if status is None:
        obs.error = f"http://{master_ui}/json/: no answer"
        return obs
    obs.ui_reachable = True
    obs.app_id, obs.app_running = master_app(status)
    if obs.app_running:
        _driver_figures(f"http://{driver_ui}", obs, now)
    return obs


def _driver_figures(base: str, obs: Observation, now: float) -> None:
    """Jobs of the last 5 minutes, the longest running task and the streaming gauges of the
    app `obs.app_id` from the driver's UI at `base`; a failure goes to `obs.error`."""
    api = f"{base}/api/v1/applications/{obs.app_id}"
    try:
        for status in ("failed", "succeeded"):
            jobs = _get(f"{api}/jobs?status={status}")
            recent = [
                j
                for j in jobs
                if j.get("completionTime") and now - _spark_time(j["completionTime"]) < JOB_WINDOW_S
            ]
            setattr(obs, f"{status}_jobs", len(recent))
        for stage in _get(f"{api}/stages?status=active"):
            tasks = _get(
                f"{api}/stages/{stage['stageId']}/{stage['attemptId']}/taskList?length=10000"
            )
            for task in tasks:
                if task.get("status") == "RUNNING" and task.get("launchTime"):
                    running = now - _spark_time(task["launchTime"])
                    obs.longest_task_s = max(obs.longest_task_s, running)
        gauges = _get(f"{base}/metrics/json").get("gauges", {})
    except (OSError, ValueError, KeyError) as exc:
        obs.error = f"{api}: {exc}"
        return
    values = {
        k.removeprefix(GAUGE_PREFIX): v.get("value")
        for k, v in gauges.items()
        if k.startswith(GAUGE_PREFIX)
    }
    obs.input_rate = _number(values.get("inputRate-total"))
    obs.processing_rate = _number(values.get("processingRate-total"))
    obs.latency_ms = _number(values.get("latency"))


def _number(value: object) -> float | None:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return None if number != number else number  # NaN: no batch yet


def kafka_lag(settings: Settings) -> int:
    """Messages on the topic that the stream has not committed to ZooKeeper yet."""
    from expo_platform.speed.kafka_source import topic_end_offsets
    from expo_platform.speed.offsets import ZkOffsets

    ends = topic_end_offsets(settings)
    with ZkOffsets(settings.stream.zookeeper, settings.stream.offsets_consumer) as zk:
        committed = zk.read(settings.stream.kafka_topic)
    return sum(max(0, end - committed.get(p, 0)) for p, end in ends.items())


def observe(settings: Settings, launcher: StreamLauncher | None, now: float) -> Observation:
    """Everything `decide` needs: the Spark UI (and the master's, when configured), the lag
    and the launcher's process."""
    driver_ui = f"127.0.0.1:{settings.stream.ui_port}"
    if settings.spark.master_ui:
        obs = observe_master(settings.spark.master_ui, driver_ui, now)
    else:
        obs = observe_ui(driver_ui, now)
    if launcher is not None:
        obs.process_alive = launcher.alive()
    try:
        obs.lag = kafka_lag(settings)
    except ExpoError as exc:
        obs.error = (obs.error + "; " if obs.error else "") + f"lag unknown: {exc}"
    return obs


class StreamLauncher:
    """The streaming app as a detached process, recorded in the services folder (pid files
    `stream.*`), so that any launcher's app can be stopped and checked the same way."""

    execs = False  # the command replaces itself by the process that runs (see start_process)
    children_first = False  # SIGTERM to its children first (see processes.Service.stop)

    def __init__(self, settings: Settings, env: dict[str, str] | None = None) -> None:
        self.settings = settings
        self.folder = settings.local.services_dir
        self.env = env or {}

    def recorded(self) -> processes.Service | None:
        return processes.recorded_service(self.folder, processes.STREAM)

    def alive(self) -> bool:
        app = self.recorded()
        return app is not None and app.alive()

    def stop(self, timeout: float = processes.STOP_TIMEOUTS[processes.STREAM]) -> bool:
        """SIGTERM (the running micro-batch finishes), SIGKILL after `timeout`."""
        app = self.recorded()
        return app.stop(timeout) if app is not None else False

    def argv(self) -> list[str]:
        """The command line that starts the app."""
        raise NotImplementedError

    def launch_env(self) -> dict[str, str]:
        """Environment the command needs beyond this process's."""
        return {}

    def start(self, timeout: float = 180.0) -> processes.Service:
        """Start the app; returns once its Spark UI answers."""
        if self.alive():
            raise ExpoError("the streaming app is already running; stop it first")
        argv = self.argv()
        env = {
            "PYSPARK_PYTHON": sys.executable,
            **path_env(self.settings),
            **self.launch_env(),
            **self.env,
        }
        return processes.start_process(
            processes.STREAM,
            self.folder,
            argv,
            port=self.settings.stream.ui_port,
            env=env,
            timeout=timeout,
            execs=self.execs,
            children_first=self.children_first,
        )


class LocalLauncher(StreamLauncher):
    """`expo stream` as a local background process."""

    def argv(self) -> list[str]:
        expo = Path(sys.executable).parent / "expo"
        return [sys.executable, str(expo), "stream"]  # as /proc shows it: pid checks match


class SparkSubmitLauncher(StreamLauncher):
    """`spark-submit --master spark://... --deploy-mode client cli.py stream`: the driver
    runs here, the executors on the standalone cluster of EXPO_SPARK_MASTER."""

    execs = True  # spark-submit execs the JVM (SparkSubmit), whose child is the Python driver
    children_first = True  # SIGTERM to the Python driver: the micro-batch finishes

    def argv(self) -> list[str]:
        master = self.settings.spark.master
        if not master.startswith("spark://"):
            raise ExpoError(
                f"EXPO_STREAM_LAUNCHER=spark-submit needs EXPO_SPARK_MASTER=spark://host:port, "
                f"not {master!r}"
            )
        return [
            str(spark_cluster.spark_home() / "bin" / "spark-submit"),
            "--master",
            master,
            "--deploy-mode",
            "client",
            "--name",
            STREAM_APP_NAME,
            str(Path(__file__).resolve().parent.parent / "cli.py"),
            "stream",
        ]

    def launch_env(self) -> dict[str, str]:
        return {**spark_cluster.spark_env(), "PYSPARK_DRIVER_PYTHON": sys.executable}


def stream_launcher(settings: Settings, env: dict[str, str] | None = None) -> StreamLauncher:
    """The launcher that EXPO_STREAM_LAUNCHER selects."""
    if settings.stream.launcher == "spark-submit":
        return SparkSubmitLauncher(settings, env)
    return LocalLauncher(settings, env)


def restart(launcher: StreamLauncher) -> tuple[bool, processes.Service]:
    """Stop the old app gracefully if it still runs, then start a new one."""
    started = time.monotonic()
    was_running = launcher.stop()
    # The driver's JVM may outlive its Python process for a moment and keep the UI port: a
    # start then failed with "already in use", and the next tick spent another restart.
    port = launcher.settings.stream.ui_port
    deadline = time.monotonic() + PORT_RELEASE_S
    while processes.port_in_use("127.0.0.1", port) and time.monotonic() < deadline:
        time.sleep(0.5)
    app = launcher.start()
    log.info(
        "streaming app restarted",
        extra={
            "pid": app.pid,
            "was_running": was_running,
            "seconds": round(time.monotonic() - started),
        },
    )
    return was_running, app


# -- the batch layer's Spark Connect server ----------------------------------------------------

BATCH_SERVER = "the batch server"


def observe_batch_server(settings: Settings, now: float) -> Observation:
    """The Spark Connect server as one tick sees it: its Spark UI (the REST API) and its
    recorded process. Its failed jobs are the failures of runs, which the run-failure sensor
    reports: they are no reason to restart a server other runs are using."""
    obs = observe_ui(f"{LOOPBACK}:{settings.local.connect_ui_port}", now)
    recorded = processes.recorded_service(settings.local.services_dir, processes.CONNECT)
    obs.process_alive = recorded is not None and recorded.alive()
    obs.failed_jobs = 0
    return obs


def restart_batch_server(settings: Settings) -> tuple[bool, processes.Service]:
    """Stop the recorded server if it still runs, then start a new one; (was it running,
    the new service)."""
    old = processes.recorded_service(settings.local.services_dir, processes.CONNECT)
    was_running = old is not None and old.alive()
    if was_running:
        old.stop(timeout=processes.STOP_TIMEOUTS[processes.CONNECT])
    return was_running, start_connect(settings)
