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

from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import KazooException, NodeExistsError, NoNodeError, ZookeeperError
from kazoo.handlers.threading import KazooTimeoutError

from expo_platform.errors import ExpoError
from expo_platform.speed.offsets import ROOT, ZkOffsets, ZkSession, close_client

log = logging.getLogger("expo_platform.speed.lease")
_kazoo_log = logging.getLogger("expo_platform.speed.lease.kazoo")
_kazoo_log.setLevel(logging.WARNING)


def writer_path(group: str) -> str:
    if not group or "/" in group:
        raise ExpoError(f"consumer {group!r} cannot be part of a ZooKeeper path")
    return f"{ROOT}/{group}/writer"


def landed_consumer(group: str) -> str:
    """The `ZkOffsets` consumer that keeps the landed offsets of a group of regions."""
    return f"{group}-landed"


class WriterLease:
    """One region's membership and lease; use as a context manager or close()."""

    def __init__(self, hosts: str, group: str, region: str, session_s: float = 10.0) -> None:
        if not region:
            raise ExpoError("a writer lease needs a region (EXPO_STREAM_REGION)")
        self.hosts, self.group, self.region = hosts, group, region
        self.root = writer_path(group)
        self._lost = False
        self._client = KazooClient(
            hosts=hosts,
            timeout=session_s,
            # Keep reconnecting: a region outlives a ZooKeeper outage, as a standby.
            connection_retry={"max_tries": -1, "delay": 0.5, "max_delay": 5.0},
            command_retry={"max_tries": 3, "delay": 0.2, "max_delay": 2.0},
            logger=_kazoo_log,
        )
        self._client.add_listener(self._on_state)
        try:
            self._client.start(timeout=session_s)
        except (KazooTimeoutError, KazooException, OSError) as exc:
            self.close()
            raise ExpoError(f"ZooKeeper at {hosts} is unreachable: {exc}") from None
        self._join()

    # -- what the streaming app asks -----------------------------------------------------------

    def holds(self) -> bool:
        """Whether this region holds the lease in its current, connected session."""
        if self._lost or self._client.state != KazooState.CONNECTED:
            return False
        try:
            data, stat = self._client.get(f"{self.root}/lease")
        except NoNodeError:
            return False
        except (KazooException, ZookeeperError, KazooTimeoutError) as exc:
            log.warning("cannot read the writer lease: %s", exc)
            return False
        return data.decode() == self.region and stat.ephemeralOwner == self._client.client_id[0]

    def try_acquire(self) -> bool:
        """Take the lease if it is free and no other running region is preferred."""
        if self.holds():
            return True
        try:
            self._join()
            if self._another_preferred_runs():
                return False
            self._client.create(f"{self.root}/lease", self.region.encode(), ephemeral=True)
        except NodeExistsError:
            return False
        except (ExpoError, KazooException, ZookeeperError, KazooTimeoutError) as exc:
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
        with contextlib.suppress(NoNodeError, KazooException, ZookeeperError, KazooTimeoutError):
            data, stat = self._client.get(f"{self.root}/lease")
            if data.decode() == self.region:
                self._client.delete(f"{self.root}/lease", version=stat.version)
                log.info("writer lease released", extra={"region": self.region})

    def landed(self, topic: str) -> dict[int, int]:
        """The next offset not yet in the landing zone, per partition."""
        with ZkOffsets(self.hosts, landed_consumer(self.group)) as zk:
            return zk.read(topic)

    def commit_landed(self, topic: str, offsets: dict[int, int]) -> None:
        """Advance the landed offsets (never backwards)."""
        with ZkOffsets(self.hosts, landed_consumer(self.group)) as zk:
            before = zk.read(topic)
            zk.commit(topic, {p: o for p, o in offsets.items() if o > before.get(p, -1)})

    # -- state shared by the regions ----------------------------------------------------------

    def holder(self) -> str:
        return self._read(f"{self.root}/lease")

    def preferred(self) -> str:
        return self._read(f"{self.root}/preferred")

    def members(self) -> list[str]:
        try:
            return sorted(self._client.get_children(f"{self.root}/members"))
        except NoNodeError:
            return []
        except (KazooException, ZookeeperError, KazooTimeoutError) as exc:
            raise ExpoError(f"ZooKeeper at {self.hosts} failed: {exc}") from None

    def close(self) -> None:
        """Leave: the lease and membership end with the session."""
        close_client(self._client)

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
        path = f"{self.root}/members/{self.region}"
        try:
            if self._lost or self._client.exists(path) is None:
                self._client.create(path, b"", ephemeral=True, makepath=True)
            self._lost = False
        except NodeExistsError:
            self._lost = False
        except (KazooException, ZookeeperError, KazooTimeoutError) as exc:
            raise ExpoError(f"ZooKeeper at {self.hosts} failed: {exc}") from None

    def _read(self, path: str) -> str:
        try:
            data, _ = self._client.get(path)
            return data.decode()
        except NoNodeError:
            return ""
        except (KazooException, ZookeeperError, KazooTimeoutError) as exc:
            raise ExpoError(f"ZooKeeper at {self.hosts} failed: {exc}") from None


def writer_status(hosts: str, group: str) -> dict[str, object]:
    """Holder, preferred region and running regions, for `expo writer status`."""
    root = writer_path(group)
    with ZkSession(hosts) as zk:
        return {
            "holder": zk.get_text(f"{root}/lease"),
            "preferred": zk.get_text(f"{root}/preferred"),
            "members": zk.children(f"{root}/members"),
        }


def switch_writer(hosts: str, group: str, to: str) -> None:
    """Make `to` the preferred writer: the holder hands over before its next micro-batch."""
    with ZkSession(hosts) as zk:
        zk.set_text(f"{writer_path(group)}/preferred", to)
    log.info("preferred writer set", extra={"group": group, "region": to})
