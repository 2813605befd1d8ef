"""`make up` / `make down`: the whole platform on one machine.

`up` starts what is not running yet, each process detached and recorded by pid files in
EXPO_SERVICES_DIR: ZooKeeper and the broker (with the topic), the streaming app, live
traffic on the wall clock at EXPO_UP_RATE beacons per second (after a backlog that covers
the previous hour), `dagster dev` (webserver and daemon) with
the schedules and sensors on, the streaming supervisor included, and the experimenters'
dashboard (`expo dashboard`). It prints the URLs.
`down` stops exactly those processes, by pid, newest first.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

from expo_platform.core.hours import ONE_HOUR, truncate_hour
from expo_platform.ops import processes, zookeeper_broker
from expo_platform.ops.connect import remote_url, start_connect
from expo_platform.ops.supervision import stream_launcher
from expo_platform.settings import Settings, path_env

GENERATOR_SECONDS = 7 * 24 * 3600  # a week: `make down` ends it sooner
# The local broker keeps its log in memory: after `make down` and `make up` it is empty, while
# the stream's checkpoint and ZooKeeper offsets survive. The stream then starts a new epoch.
LOCAL_STREAM_ENV = {"EXPO_STREAM_ON_BROKER_RESET": "new-epoch"}


def backlog_minutes(now: datetime) -> int:
    """Minutes of traffic sent first: the previous hour whole (and five minutes before it,
    for visits under way), so that a complete hour exists minutes after `make up`."""
    previous = truncate_hour(now) - ONE_HOUR
    return int((now - previous).total_seconds() // 60) + 5


def _script(name: str) -> list[str]:
    """A console script of this environment, run by its interpreter: the command line that
    /proc shows, so that the pid checks recognise the process."""
    return [sys.executable, str(Path(sys.executable).parent / name)]


def _new_epoch_for_empty_broker(settings: Settings, say: Callable[[str], None]) -> None:
    """The local broker keeps its log in memory, so the broker `up` has just started is empty.
    A stream that ran before holds a checkpoint and ZooKeeper offsets past its end: start a
    new epoch from the broker's start before the stream starts, rather than wait for the
    query to notice. It must not: traffic sent meanwhile may already reach past the old
    offsets, and the query would then skip the new broker's first messages unnoticed."""
    from expo_platform.speed.app import new_epoch
    from expo_platform.speed.files import StreamFiles
    from expo_platform.speed.offsets import ZkOffsets

    files = StreamFiles(settings)
    topic = settings.stream.kafka_topic
    with ZkOffsets(settings.stream.zookeeper, settings.stream.offsets_consumer) as zk:
        if not files.checkpoint.exists() and not any(zk.read(topic).values()):
            return  # the stream never ran here: it starts at the broker's start anyway
        new_epoch(files, zk, topic, "make up started the local broker, which starts empty")
    say(f"stream: new epoch {files.epoch()} from the broker's start (the broker started empty)")


def up(settings: Settings, project: Path, dagster_port: int, say: Callable[[str], None]) -> None:
    """Start every part of the platform that is not running yet; print where to look."""
    folder = settings.local.services_dir
    _, zk_port = processes.parse_address(settings.stream.zookeeper, 2181)
    _, kafka_port = processes.parse_address(settings.stream.kafka_bootstrap, 9092)
    broker_was_running = processes.BROKER in {s.name for s in processes.running_services(folder)}
    zookeeper_broker.services_up(
        folder,
        zk_port,
        kafka_port,
        settings.stream.kafka_topic,
        zookeeper_broker.DEFAULT_PARTITIONS,
        say,
    )
    running = {s.name for s in processes.running_services(folder)}
    settings.lake.root.mkdir(parents=True, exist_ok=True)
    if processes.STREAM not in running:
        if not broker_was_running:
            _new_epoch_for_empty_broker(settings, say)
        app = stream_launcher(settings, LOCAL_STREAM_ENV).start()
        say(f"{app.describe()} (started)")
    if processes.GENERATOR not in running:
        argv = [
            *_script("expo"),
            "generate",
            "--kafka",
            settings.stream.kafka_bootstrap,
            "--topic",
            settings.stream.kafka_topic,
            "--rate",
            str(settings.local.up_rate),
            "--duration",
            str(GENERATOR_SECONDS),
            "--backlog-minutes",
            str(settings.local.up_backlog_minutes or backlog_minutes(datetime.now(UTC))),
        ]
        generator = processes.start_process(
            processes.GENERATOR, folder, argv, env=path_env(settings)
        )
        say(f"{generator.describe()} (started, {settings.local.up_rate}/s)")
    if processes.CONNECT in running:
        connect = processes.recorded_service(folder, processes.CONNECT)
    else:
        connect = start_connect(settings)
        say(f"{connect.describe()} (started)")
    remote = remote_url(connect.port)
    if processes.DAGSTER not in running:
        from expo_platform.ops.dagster_home import ensure_dagster_home

        home = ensure_dagster_home(settings, project)
        argv = [
            *_script("dagster"),
            "dev",
            "-w",
            str(project / "workspace.yaml"),
            "-h",
            "127.0.0.1",
            "-p",
            str(dagster_port),
        ]
        env = {
            **path_env(settings),
            "DAGSTER_HOME": str(home),
            "EXPO_SUPERVISE": "on",
            "EXPO_SPARK_REMOTE": remote,  # every run on the warm server
            **LOCAL_STREAM_ENV,  # for the supervisor's restarts of the stream
        }
        dagster = processes.start_process(
            processes.DAGSTER, folder, argv, port=dagster_port, env=env, cwd=project, timeout=240
        )
        say(f"{dagster.describe()} (started)")
    if processes.DASHBOARD not in running:
        port = settings.local.dashboard_port
        argv = [*_script("expo"), "dashboard", "--host", "127.0.0.1", "--port", str(port)]
        dashboard = processes.start_process(
            processes.DASHBOARD, folder, argv, port=port, env=path_env(settings)
        )
        say(f"{dashboard.describe()} (started)")
    say(f"lake: {settings.lake.root}")
    say(f"metric store: {settings.lake.metric_store}")
    say(f"experiments dashboard: http://127.0.0.1:{settings.local.dashboard_port}/")
    say(f"Dagster UI: http://127.0.0.1:{dagster_port}")
    say(f"Spark UI of the streaming app: http://127.0.0.1:{settings.stream.ui_port}")
    say(f"Spark Connect server of the batch layer: {remote}")
    say(f"  its Spark UI: http://127.0.0.1:{settings.local.connect_ui_port}")
    say(f"  the server holds the Hive metastore: run `expo batch` with EXPO_SPARK_REMOTE={remote}")
    say("stop everything with: make down")


def down(settings: Settings, say: Callable[[str], None]) -> list[processes.Service]:
    """Stop every recorded platform process, newest first."""
    stopped = processes.stop_from_pidfiles(
        settings.local.services_dir, names=processes.PLATFORM_NAMES
    )
    for service in stopped:
        say(f"{service.name} pid={service.pid} stopped")
    if not stopped:
        say(f"nothing running from {settings.local.services_dir}")
    return stopped


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m expo_platform.ops.local up|down`."""
    from expo_platform.cli import project_dir
    from expo_platform.logs import run_command

    parser = argparse.ArgumentParser(prog="python -m expo_platform.ops.local", description=__doc__)
    parser.add_argument("command", choices=("up", "down"))
    parser.add_argument("--dagster-port", type=int, default=3000)
    args = parser.parse_args(argv)

    def action(settings: Settings) -> None:
        if args.command == "up":
            up(settings, project_dir(), args.dagster_port, print)
        else:
            down(settings, print)

    return run_command("make up", action)


if __name__ == "__main__":
    sys.exit(main())
