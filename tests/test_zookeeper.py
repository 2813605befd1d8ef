"""The ZooKeeper session (set-up, bounded calls, the platform's errors) and the writer lease
that keeps one session for the life of the streaming app, against the run's real ZooKeeper."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable

import pytest
from kazoo.client import KazooClient
from kazoo.exceptions import NoNodeError

from expo_platform.errors import ExpoError
from expo_platform.ops import readiness
from expo_platform.ops.processes import free_port
from expo_platform.ops.zookeeper_broker import start_zookeeper
from expo_platform.speed.lease import (
    WriterLease,
    landed_consumer,
    switch_writer,
    writer_path,
    writer_status,
)
from expo_platform.speed.offsets import ZkOffsets
from expo_platform.speed.zookeeper import ZooKeeperSession

LEASE_S = 4  # the shortest session timeout the test ZooKeeper grants (2 ticks)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"no {what} in {timeout:.0f}s"
        time.sleep(0.1)


def within(seconds: float, call: Callable[[], object]) -> BaseException | None:
    """What `call` raised, or None; fail the test if it takes longer than `seconds`."""
    raised: list[BaseException | None] = []

    def run() -> None:
        try:
            call()
            raised.append(None)
        except BaseException as exc:
            raised.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert raised, f"the call still waits after {seconds:.0f}s"
    return raised[0]


def expire(session: ZooKeeperSession) -> None:
    """Make ZooKeeper end a session, as after a long partition: a second client with the
    same session id and password closes it; the first then finds it expired."""
    other = KazooClient(hosts=session.hosts, client_id=session.client.client_id)
    other.start(timeout=5)
    other.stop()
    other.close()


# -- the session ------------------------------------------------------------------------------


def test_a_session_starts_reads_writes_and_closes(zookeeper):
    root = f"/expo-test/{unique('session')}"
    with ZooKeeperSession(zookeeper.address, timeout=5) as zk:
        assert zk.connected and isinstance(zk.session_id, int) and zk.hosts == zookeeper.address
        assert zk.get_text(f"{root}/missing") == "" and zk.children(root) == []
        zk.set_text(f"{root}/a", "one")  # creates the parents
        zk.set_text(f"{root}/a", "two")  # overwrites
        zk.set_text(f"{root}/b", "")
        assert zk.get_text(f"{root}/a") == "two" and zk.children(root) == ["a", "b"]
        with pytest.raises(NoNodeError):  # an answer for the caller, not a failure
            zk.call(zk.client.get, f"{root}/missing")
    assert not zk.connected and zk.session_id is None
    with ZooKeeperSession(zookeeper.address) as zk:  # a new session sees the writes
        assert zk.get_text(f"{root}/a") == "two"
        zk.call(zk.client.delete, root, recursive=True)


def test_zookeeper_refusals_are_errors_that_name_the_hosts(zookeeper):
    root = f"/expo-test/{unique('refused')}"
    with ZooKeeperSession(zookeeper.address) as zk:
        zk.set_text(f"{root}/child", "x")
        with pytest.raises(ExpoError) as refused:
            zk.call(zk.client.delete, root)  # it has a child
        assert str(refused.value).startswith(
            f"ZooKeeper at {zookeeper.address} failed (delete {root}): NotEmptyError"
        )
        zk.call(zk.client.delete, root, recursive=True)
    with pytest.raises(ExpoError, match=f"ZooKeeper at {zookeeper.address} is unreachable"):
        zk.get_text(root)  # after close()


@pytest.mark.parametrize("reconnect", [False, True])
def test_an_unreachable_zookeeper_is_a_clear_error_not_a_hang(reconnect):
    hosts = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    expected = rf"ZooKeeper at {hosts} is unreachable \(no session in 1s\)"
    with pytest.raises(ExpoError, match=expected):
        ZooKeeperSession(hosts, timeout=1.0, reconnect=reconnect)
    assert time.monotonic() - started < 10


def test_hosts_that_are_not_host_port_pairs_are_a_clear_error():
    with pytest.raises(ExpoError, match="ZooKeeper hosts '127.0.0.1:zk' are not host:port"):
        ZooKeeperSession("127.0.0.1:zk", timeout=1.0)


def test_a_long_lived_session_fails_calls_within_bounds_and_comes_back(tmp_path):
    """A frozen ZooKeeper: kazoo would queue the calls of a reconnecting session until it
    answers again; they fail within bounds instead, and the session serves again after."""
    zk_service = start_zookeeper(tmp_path, free_port())
    try:
        zk = ZooKeeperSession(zk_service.address, timeout=2.0, reconnect=True)
        zk.set_text("/frozen", "1")
        zk_service.pause()
        try:
            for _ in range(2):  # the first call loses its connection, the second has none
                error = within(30, lambda: zk.get_text("/frozen"))
                assert isinstance(error, ExpoError), error
                assert str(error).startswith(f"ZooKeeper at {zk_service.address} is unreachable")
        finally:
            zk_service.resume()
        until(lambda: zk.connected, 60, "reconnection")
        until(lambda: _answers(zk, "/frozen"), 30, "an answer after the outage")
        zk.close()
    finally:
        zk_service.stop()


def _answers(zk: ZooKeeperSession, path: str) -> bool:
    try:
        return zk.get_text(path) == "1"
    except ExpoError:
        return False


def test_the_readiness_probe_uses_the_session(zookeeper):
    assert readiness._zookeeper_ready(zookeeper.address, 2.0)
    started = time.monotonic()
    assert not readiness._zookeeper_ready(f"127.0.0.1:{free_port()}", 0.5)
    assert time.monotonic() - started < 5


def test_offsets_use_a_given_session_and_leave_it_open(zookeeper):
    consumer = unique("shared")
    with ZooKeeperSession(zookeeper.address) as zk:
        session_id = zk.session_id
        with ZkOffsets(zk, consumer) as offsets:
            offsets.commit("beacons", {0: 3})
        assert zk.connected and zk.session_id == session_id
        assert ZkOffsets(zk, consumer).read("beacons", fresh=True) == {0: 3}
    with ZkOffsets(zookeeper.address, consumer) as offsets:  # its own session, closed after
        assert offsets.read("beacons") == {0: 3}
        offsets.delete("beacons")
    assert not offsets.session.connected


# -- the writer lease -------------------------------------------------------------------------


def test_the_lease_keeps_one_session_across_micro_batches(zookeeper, monkeypatch):
    """What the streaming app asks of the lease each micro-batch (the hand-over and lease
    checks, the landed offsets read and advanced) and between batches, in one session."""
    group, topic = unique("one-session"), "beacons"
    with WriterLease(zookeeper.address, group, "a", LEASE_S) as lease:
        assert lease.try_acquire()
        session_id = lease.session.session_id
        starts: list[KazooClient] = []
        start = KazooClient.start

        def counted_start(client: KazooClient, *args, **kwargs):
            starts.append(client)  # the real start follows: this only counts sessions
            return start(client, *args, **kwargs)

        monkeypatch.setattr(KazooClient, "start", counted_start)
        for batch in range(1, 6):
            assert not lease.should_hand_over()
            assert lease.holds() or lease.try_acquire()
            assert lease.landed(topic) == ({} if batch == 1 else {0: 10 * (batch - 1)})
            lease.commit_landed(topic, {0: 10 * batch})
            assert lease.holds()  # the check between micro-batches
        assert starts == [], "a micro-batch opened a ZooKeeper session of its own"
        assert lease.session.session_id == session_id
        monkeypatch.undo()
        with ZooKeeperSession(zookeeper.address) as other:
            _, stat = other.call(other.client.get, f"{writer_path(group)}/lease")
            assert stat.ephemeralOwner == session_id
            assert ZkOffsets(other, landed_consumer(group)).read(topic) == {0: 50}
        lease.commit_landed(topic, {0: 20})  # never backwards
        assert lease.landed(topic) == {0: 50}
    assert writer_status(zookeeper.address, group) == {
        "holder": "",
        "preferred": "",
        "members": [],
    }


def test_a_lost_session_loses_the_lease_until_it_is_taken_again(zookeeper):
    group = unique("lost")
    with WriterLease(zookeeper.address, group, "a", LEASE_S) as lease:
        assert lease.try_acquire()
        old = lease.session.session_id
        expire(lease.session)
        until(lambda: not lease.holds(), 30, "the lease lost with the session")
        # The session's lease and membership went with it; kazoo starts a new session, and
        # the next check joins again and takes the free lease, in the new session.
        until(lease.try_acquire, 30, "the lease taken again")
        assert lease.session.session_id not in (None, old)
        assert lease.holds() and lease.holder() == "a" and lease.members() == ["a"]


def test_the_lease_goes_to_one_region_at_a_time_and_moves_on_request(zookeeper):
    group = unique("regions")
    a = WriterLease(zookeeper.address, group, "a", LEASE_S)
    try:
        with WriterLease(zookeeper.address, group, "b", LEASE_S) as b:
            assert a.try_acquire() and not b.try_acquire()
            assert a.holds() and not b.holds()
            assert writer_status(zookeeper.address, group) == {
                "holder": "a",
                "preferred": "",
                "members": ["a", "b"],
            }
            switch_writer(zookeeper.address, group, "b")
            assert not b.try_acquire()  # the holder hands over, nobody takes it from under it
            assert a.should_hand_over() and not b.should_hand_over()
            a.release()
            assert not a.holds() and b.try_acquire() and b.holder() == "b"
            assert not a.try_acquire()  # the preferred region runs
            a.close()  # a's membership ends with its session
            assert b.members() == ["b"]
        # b's session ended, and with it the lease.
        assert writer_status(zookeeper.address, group)["holder"] == ""
    finally:
        a.close()


def test_a_lease_on_an_unreachable_zookeeper_is_a_clear_error():
    hosts = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(ExpoError, match=f"ZooKeeper at {hosts} is unreachable"):
        WriterLease(hosts, unique("nowhere"), "a", 1.0)
    assert time.monotonic() - started < 10
