"""Local ZooKeeper and broker: start, readiness, pid files, the CLI; offsets in ZooKeeper."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import time

import pytest
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient
from kazoo.client import KazooClient, TransactionRequest
from kazoo.exceptions import ConnectionLoss

from expo_platform.errors import ExpoError
from expo_platform.ops import processes, services
from expo_platform.ops.processes import (
    Service,
    free_port,
    pid_runs,
    recorded_service,
    running_services,
    stop_from_pidfiles,
)
from expo_platform.ops.zookeeper_broker import ensure_topic, start_broker, start_zookeeper
from expo_platform.speed.offsets import ZkOffsets, offsets_path
from tests.fixtures_services import unique_topic


def broker_answers(address: str, timeout: float = 2.0) -> bool:
    try:
        return bool(
            AdminClient({"bootstrap.servers": address, "log_level": 0})
            .list_topics(timeout=timeout)
            .brokers
        )
    except KafkaException:
        return False


def test_session_services_answer(zookeeper, kafka):
    client = KazooClient(hosts=zookeeper.address, timeout=5)
    client.start(timeout=5)
    try:
        assert "zookeeper" in client.get_children("/")
    finally:
        client.stop()
        client.close()
    assert broker_answers(kafka.address)


def test_start_records_pidfiles_and_stop_removes_them(tmp_path):
    zk = start_zookeeper(tmp_path, free_port())
    broker = start_broker(tmp_path, free_port())
    try:
        for service in (zk, broker):
            assert (tmp_path / f"{service.name}.pid").read_text().strip() == str(service.pid)
            assert pid_runs(service.pid, service.argv)
            assert (tmp_path / f"{service.name}.log").exists()
        assert "clientPortAddress=127.0.0.1" in (tmp_path / "zookeeper" / "zoo.cfg").read_text()
        assert {s.name for s in running_services(tmp_path)} == {"zookeeper", "broker"}
        stopped = stop_from_pidfiles(tmp_path)
        assert sorted(s.pid for s in stopped) == sorted([zk.pid, broker.pid])
        assert not zk.alive() and not broker.alive()
        assert not list(tmp_path.glob("*.pid")) and not list(tmp_path.glob("*.json"))
        assert not processes.port_in_use("127.0.0.1", zk.port)
        assert not broker_answers(broker.address, timeout=0.5)
    finally:
        zk.stop()
        broker.stop()


def test_stop_from_pidfiles_kills_only_the_recorded_command(tmp_path):
    """A pid file whose pid now runs something else (pid reuse) must not kill that process."""
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        fake = Service(
            "broker",
            bystander.pid,
            "127.0.0.1",
            1,
            ["/not/tansu", "broker"],
            tmp_path / "broker.log",
            tmp_path / "broker.pid",
        )
        processes._write_pidfiles(fake)
        zk = start_zookeeper(tmp_path, free_port())
        stopped = stop_from_pidfiles(tmp_path)
        assert [s.name for s in stopped] == ["zookeeper"]
        assert not zk.alive()
        assert bystander.poll() is None, "an unrelated process was killed"
        assert recorded_service(tmp_path, "broker") is None  # stale record removed
    finally:
        bystander.kill()
        bystander.wait()


def test_start_refuses_a_port_in_use(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(ExpoError, match="already in use"):
            start_broker(tmp_path, busy.getsockname()[1])
    assert not list(tmp_path.glob("*.pid"))


def test_pause_makes_the_broker_unresponsive_until_resumed(tmp_path):
    broker = start_broker(tmp_path, free_port())
    try:
        broker.pause()
        assert not broker_answers(broker.address, timeout=1.0)
        broker.resume()
        assert broker_answers(broker.address, timeout=5.0)
        broker.pause()  # stop() must also end a paused process promptly
        started = time.monotonic()
        assert broker.stop(timeout=5.0)
        assert time.monotonic() - started < 5.0
    finally:
        broker.stop()


@pytest.fixture
def restore_logging():
    """main() points the platform's log handler at the captured stderr; undo that after."""
    root = logging.getLogger("expo_platform")
    saved = (root.handlers[:], root.level, root.propagate)
    yield
    root.handlers[:], root.level, root.propagate = saved[0], saved[1], saved[2]


def test_cli_up_is_idempotent_and_down_stops(tmp_path, monkeypatch, capsys, restore_logging):
    zk_port, kafka_port = free_port(), free_port()
    monkeypatch.setenv("EXPO_SERVICES_DIR", str(tmp_path / "svc"))
    monkeypatch.setenv("EXPO_ZOOKEEPER", f"127.0.0.1:{zk_port}")
    monkeypatch.setenv("EXPO_KAFKA_BOOTSTRAP", f"127.0.0.1:{kafka_port}")
    monkeypatch.setenv("EXPO_KAFKA_TOPIC", "beacons")
    try:
        assert services.main(["up", "--partitions", "3"]) == 0
        first = capsys.readouterr().out
        assert f"zookeeper 127.0.0.1:{zk_port} pid=" in first and "(started)" in first
        assert "topic beacons partitions=3" in first
        assert services.main(["up"]) == 0
        second = capsys.readouterr().out
        assert second.count("(already running)") == 2
        assert services.main(["status"]) == 0
        assert services.main(["down"]) == 0
        assert "broker pid=" in capsys.readouterr().out
        assert services.main(["status"]) == 1
        assert "not running" in capsys.readouterr().out
    finally:
        stop_from_pidfiles(tmp_path / "svc")


def test_ensure_topic_creates_once(kafka):
    topic = unique_topic("ensure")
    assert ensure_topic(kafka.address, topic, 3) == 3
    assert ensure_topic(kafka.address, topic, 5) == 3  # existing topics are left as they are


# -- offsets in ZooKeeper ---------------------------------------------------------------


def test_offsets_roundtrip_and_layout(zookeeper):
    with ZkOffsets(zookeeper.address, "roundtrip") as offsets:
        assert offsets.read("beacons") == {}
        offsets.commit("beacons", {0: 5, 1: 7})
        offsets.commit("beacons", {1: 9, 2: 3})
        assert offsets.read("beacons") == {0: 5, 1: 9, 2: 3}
        assert offsets.read("other") == {}
    client = KazooClient(hosts=zookeeper.address)
    client.start(timeout=5)
    try:
        data, _ = client.get("/expo/roundtrip/offsets/beacons/1")
        assert data == b"9"
    finally:
        client.stop()
        client.close()
    with ZkOffsets(zookeeper.address, "roundtrip") as offsets:  # a new session sees them
        assert offsets.read("beacons") == {0: 5, 1: 9, 2: 3}
        offsets.delete("beacons")
        assert offsets.read("beacons") == {}


def test_commit_writes_all_partitions_in_one_transaction(zookeeper):
    with ZkOffsets(zookeeper.address, "txn") as offsets:
        offsets.commit("beacons", {0: 1})
        offsets.commit("beacons", {0: 10, 1: 20, 2: 30})  # one update, two creates
    client = KazooClient(hosts=zookeeper.address)
    client.start(timeout=5)
    try:
        parent = offsets_path("txn", "beacons")
        stats = [client.get(f"{parent}/{p}")[1] for p in (0, 1, 2)]
    finally:
        client.stop()
        client.close()
    # Every write of one ZooKeeper transaction carries the same transaction id (zxid).
    assert len({s.mzxid for s in stats}) == 1


def test_a_commit_retried_after_a_lost_connection_builds_a_new_transaction(
    zookeeper,
    monkeypatch,
):
    """kazoo retries a call whose connection was lost; a transaction commits once, so the
    retry must build a new one (reusing it raised "Transaction already committed", seen with
    a paused ZooKeeper)."""
    commit = TransactionRequest.commit
    attempts = []

    def connection_lost_once(transaction):
        attempts.append(transaction)
        if len(attempts) == 1:
            transaction.committed = True  # kazoo marks it before the request goes out
            raise ConnectionLoss()
        return commit(transaction)

    monkeypatch.setattr(TransactionRequest, "commit", connection_lost_once)
    with ZkOffsets(zookeeper.address, "lost") as offsets:
        offsets.commit("beacons", {0: 5, 1: 7})
        assert offsets.read("beacons") == {0: 5, 1: 7}
    assert len(attempts) == 2 and attempts[0] is not attempts[1]


def test_unreachable_zookeeper_is_a_clear_error():
    started = time.monotonic()
    with pytest.raises(ExpoError, match="unreachable"):
        ZkOffsets(f"127.0.0.1:{free_port()}", "nobody", timeout=1.0)
    assert time.monotonic() - started < 10


def test_paused_zookeeper_fails_within_bounds(tmp_path):
    zk = start_zookeeper(tmp_path, free_port())
    try:
        offsets = ZkOffsets(zk.address, "paused", timeout=2.0)
        offsets.commit("beacons", {0: 1})
        zk.pause()
        started = time.monotonic()
        with pytest.raises(ExpoError):
            offsets.commit("beacons", {0: 2})
        assert time.monotonic() - started < 30
        zk.resume()
        offsets.close()
    finally:
        zk.stop()


def test_offsets_reject_bad_names_and_values(zookeeper):
    with pytest.raises(ExpoError):
        offsets_path("a/b", "beacons")
    with ZkOffsets(zookeeper.address, "bad") as offsets, pytest.raises(ExpoError):
        offsets.commit("beacons", {0: -1})
