"""The writer lease: which region's streaming app writes the speed layer's results.

Two or more streaming apps ("regions", EXPO_STREAM_REGION) read the same topic, each with its
own checkpoint, state files and ZooKeeper offsets. Every region processes every micro-batch, so
its state and offsets stay current; only the holder of the lease writes: the metric store and
the landing zone. ZooKeeper nodes, under `/expo/<EXPO_STREAM_CONSUMER>/writer`:

- `lease`: ephemeral, holds the writer's region. It lives as long as the writer's ZooKeeper
  session, so a writer that dies keeps it for at most EXPO_WRITER_LEASE_SECONDS (the session
  timeout); then a standby takes it.
- `members/<region>`: ephemeral, one per running region.
- `preferred`: persistent, the region `expo writer switch --to` named. A holder hands the lease
  over when the preferred region runs; a standby does not take the lease from under it.
- `landed/<topic>/<partition>`: the next Kafka offset whose message is in the landing zone,
  whichever region landed it. A new writer first lands what its predecessor had not (read
  back from Kafka), and never lands an offset below it: the landing zone holds every message
  once across a fail-over.

A writer checks the lease before each micro-batch. Its writes are absolute values computed
from the same messages as its successor's, so a write that lands just after the lease moved
repeats a value, never adds to one.
"""

from __future__ import annotations

import contextlib
import logging

from kazoo.client import KazooState
from kazoo.exceptions import NodeExistsError, NoNodeError

from expo_platform.errors import ExpoError
from expo_platform.speed.offsets import ROOT, ZkOffsets
from expo_platform.speed.zookeeper import ZooKeeperSession

log = logging.getLogger("expo_platform.speed.lease")


def writer_path(group: str) -> str:
    if not group or "/" in group:
        raise ExpoError(f"consumer {group!r} cannot be part of a ZooKeeper path")
    return f"{ROOT}/{group}/writer"


def landed_consumer(group: str) -> str:
    """The `ZkOffsets` consumer that keeps the landed offsets of a group of regions."""
    return f"{group}-landed"


class WriterLease:
    """One region's membership and lease; use as a context manager or close().

    It keeps one ZooKeeper session for its life (the streaming app's), which reconnects after
    an outage; the landed offsets are read and committed in it too. The lease and membership
    are ephemeral nodes of that session: when ZooKeeper expires it, both are gone, `holds()`
    says so, and the next `try_acquire()` joins again and takes the lease if it is free.
    """

    def __init__(self, hosts: str, group: str, region: str, session_s: float = 10.0) -> None:
        if not region:
            raise ExpoError("a writer lease needs a region (EXPO_STREAM_REGION)")
        self.hosts, self.group, self.region = hosts, group, region
        self.root = writer_path(group)
        self._lost = False
        self.session = ZooKeeperSession(hosts, session_s, reconnect=True, listener=self._on_state)
        self._landed = ZkOffsets(self.session, landed_consumer(group))
        try:
            self._join()
        except ExpoError:
            self.close()
            raise

    # -- what the streaming app asks -----------------------------------------------------------

    def holds(self) -> bool:
        """Whether this region holds the lease in its current, connected session."""
        zk = self.session
        if self._lost or not zk.connected:
            return False
        try:
            data, stat = zk.call(zk.client.get, f"{self.root}/lease")
        except NoNodeError:
            return False
        except ExpoError as exc:
            log.warning("cannot read the writer lease: %s", exc)
            return False
        return data.decode() == self.region and stat.ephemeralOwner == zk.session_id

    def try_acquire(self) -> bool:
        """Take the lease if it is free and no other running region is preferred."""
        if self.holds():
            return True
        zk = self.session
        try:
            self._join()
            if self._another_preferred_runs():
                return False
            zk.call(zk.client.create, f"{self.root}/lease", self.region.encode(), ephemeral=True)
        except NodeExistsError:
            # Another region's, or this session's own from a create retried after its
            # connection was lost: the node's owner tells.
            return self.holds()
        except ExpoError as exc:
            log.warning("cannot take the writer lease: %s", exc)
            return False
        log.info("writer lease taken", extra={"region": self.region, "group": self.group})
        return True

    def should_hand_over(self) -> bool:
        """Another running region is preferred (`expo writer switch`)."""
        try:
            return self._another_preferred_runs()
        except ExpoError as exc:
            log.warning("cannot read the preferred writer: %s", exc)
            return False

    def release(self) -> None:
        """Give the lease up, if this region holds it."""
        zk = self.session
        with contextlib.suppress(NoNodeError, ExpoError):
            data, stat = zk.call(zk.client.get, f"{self.root}/lease")
            if data.decode() == self.region:
                zk.call(zk.client.delete, f"{self.root}/lease", version=stat.version)
                log.info("writer lease released", extra={"region": self.region})

    def landed(self, topic: str) -> dict[int, int]:
        """The next offset not yet in the landing zone, per partition."""
        return self._landed.read(topic)

    def commit_landed(self, topic: str, offsets: dict[int, int]) -> None:
        """Advance the landed offsets (never backwards)."""
        before = self._landed.read(topic)
        self._landed.commit(topic, {p: o for p, o in offsets.items() if o > before.get(p, -1)})

    # -- state shared by the regions ----------------------------------------------------------

    def holder(self) -> str:
        return self.session.get_text(f"{self.root}/lease")

    def preferred(self) -> str:
        return self.session.get_text(f"{self.root}/preferred")

    def members(self) -> list[str]:
        return self.session.children(f"{self.root}/members")

    def close(self) -> None:
        """Leave: the lease and membership end with the session."""
        self.session.close()

    def __enter__(self) -> WriterLease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ----------------------------------------------------------------------------

    def _on_state(self, state: str) -> None:
        if state == KazooState.LOST:
            self._lost = True  # the session, its lease and membership are gone
            log.warning("ZooKeeper session lost: not the writer", extra={"region": self.region})
        elif state == KazooState.SUSPENDED:
            log.warning("ZooKeeper connection suspended", extra={"region": self.region})

    def _another_preferred_runs(self) -> bool:
        """A region other than this one is preferred (`expo writer switch`) and running."""
        preferred = self.preferred()
        return preferred not in ("", self.region) and preferred in self.members()

    def _join(self) -> None:
        """Register as a running region (again, after a lost session)."""
        zk = self.session
        path = f"{self.root}/members/{self.region}"
        with contextlib.suppress(NodeExistsError):
            if self._lost or zk.call(zk.client.exists, path) is None:
                zk.call(zk.client.create, path, b"", ephemeral=True, makepath=True)
        self._lost = False


def writer_status(hosts: str, group: str) -> dict[str, object]:
    """Holder, preferred region and running regions, for `expo writer status`."""
    root = writer_path(group)
    with ZooKeeperSession(hosts) as zk:
        return {
            "holder": zk.get_text(f"{root}/lease"),
            "preferred": zk.get_text(f"{root}/preferred"),
            "members": zk.children(f"{root}/members"),
        }


def switch_writer(hosts: str, group: str, to: str) -> None:
    """Make `to` the preferred writer: the holder hands over before its next micro-batch."""
    with ZooKeeperSession(hosts) as zk:
        zk.set_text(f"{writer_path(group)}/preferred", to)
    log.info("preferred writer set", extra={"group": group, "region": to})
