"""A broker outage is quiet: structured lines that name the address and the error, not
librdkafka's own line per reconnect attempt on stderr (hundreds a minute), in the
supervisor's observation, the Kafka source and the producer."""

from __future__ import annotations

import logging
import time

import pytest

from expo_platform.devtools.producer import make_producer
from expo_platform.errors import ExpoError
from expo_platform.ops.processes import free_port
from expo_platform.ops.supervision import observe
from expo_platform.settings import load_settings
from expo_platform.speed.kafka_source import topic_end_offsets

LIBRDKAFKA_NOISE = ("Connect to ipv4#", "Connection refused", "rdkafka", "%3|")


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def kafka_log():
    handler = Lines()
    logger = logging.getLogger("expo_platform.kafka")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler.records
    logger.removeHandler(handler)


@pytest.fixture
def nowhere(tmp_path):
    """Settings whose broker address has nothing listening on it."""
    return load_settings(
        {
            "EXPO_LAKE": str(tmp_path / "lake"),
            "EXPO_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}",
            "EXPO_ZOOKEEPER": f"127.0.0.1:{free_port()}",
            "EXPO_STREAM_UI_PORT": str(free_port()),
        }
    )


def _noise(text: str) -> list[str]:
    return [line for line in text.splitlines() if any(n in line for n in LIBRDKAFKA_NOISE)]


def test_the_supervisor_and_the_source_name_the_address_once(nowhere, capfd, kafka_log):
    address = nowhere.stream.kafka_bootstrap
    obs = observe(nowhere, None, time.time())
    assert f"lag unknown: Kafka at {address} is unreachable" in obs.error
    with pytest.raises(ExpoError, match=f"Kafka at {address} is unreachable"):
        topic_end_offsets(nowhere)
    assert _noise(capfd.readouterr().err) == []
    # The error the tick reports is the one line; the clients add at most one each.
    assert all(r.address == address for r in kafka_log) and len(kafka_log) <= 2


def test_the_producer_counts_its_failures_and_logs_them_once(nowhere, capfd, kafka_log):
    address = nowhere.stream.kafka_bootstrap
    producer = make_producer(address, {"message.timeout.ms": "4000"})
    failed = []
    for i in range(20):
        producer.produce("beacons", value=f"{i}", on_delivery=lambda e, m: failed.append(e))
    assert producer.flush(15) == 0
    assert len(failed) == 20 and all(e is not None for e in failed)
    assert _noise(capfd.readouterr().err) == []
    assert {(r.client, r.address) for r in kafka_log} == {("producer", address)}
    assert len(kafka_log) <= 2
