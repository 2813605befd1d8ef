"""How a starting service is known to be ready: one probe per kind of service.

A probe takes the service's `host:port` and a timeout, and answers True once clients can
use the service; any failure means "not ready yet".
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from expo_platform.errors import ExpoError
from expo_platform.logs import quiet_kafka_conf


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
