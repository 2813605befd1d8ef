"""Real ZooKeeper and Kafka-compatible broker (Tansu) for the tests, on free loopback ports.

The fixtures `kafka` and `zookeeper` reach every test module (conftest.py registers this
module in `pytest_plugins`).
Both are session-scoped: started once, stopped at the end of the run. Tests share the broker,
so each test should use its own topic (`unique_topic()`) and ZooKeeper consumer name.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from expo_platform.errors import ExpoError
from expo_platform.ops.processes import Service, free_port
from expo_platform.ops.zookeeper_broker import start_broker, start_zookeeper

START_ATTEMPTS = 3
_topics = itertools.count(1)


def unique_topic(prefix: str = "t") -> str:
    """A topic name no other test of this run uses."""
    return f"{prefix}-{os.getpid()}-{next(_topics)}"


def new_topic(kafka, prefix: str, partitions: int, lines=()) -> str:
    """A topic no other test uses, with `partitions` partitions and `lines` produced to it."""
    from expo_platform.devtools.producer import produce_lines
    from expo_platform.ops.zookeeper_broker import ensure_topic

    topic = unique_topic(prefix)
    ensure_topic(kafka.address, topic, partitions)
    if lines:
        produce_lines(kafka.address, topic, lines)
    return topic


def start_on_free_port(start: Callable[[Path, int], Service], folder: Path) -> Service:
    """Start a service on a free port, retrying when another process grabs the port first."""
    for attempt in range(1, START_ATTEMPTS + 1):
        try:
            return start(folder, free_port())
        except ExpoError as exc:
            if "already in use" not in str(exc) or attempt == START_ATTEMPTS:
                raise
    raise AssertionError("unreachable")


@pytest.fixture(scope="session")
def zookeeper(tmp_path_factory) -> Iterator[Service]:
    """A standalone ZooKeeper server for the whole run; `.address` is its `host:port`."""
    service = start_on_free_port(start_zookeeper, tmp_path_factory.mktemp("zookeeper"))
    yield service
    service.stop()


@pytest.fixture(scope="session")
def kafka(tmp_path_factory) -> Iterator[Service]:
    """A Tansu broker (in-memory storage) for the whole run; `.address` is its bootstrap."""
    service = start_on_free_port(start_broker, tmp_path_factory.mktemp("broker"))
    yield service
    service.stop()
