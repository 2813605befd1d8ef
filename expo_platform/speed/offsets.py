"""The streaming app's Kafka offsets in ZooKeeper: `/expo/<consumer>/offsets/<topic>/<partition>`.

Each node holds the next offset to read, as ASCII digits. A commit writes every partition of
one micro-batch in a single ZooKeeper transaction, so readers never see half a batch.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping

from kazoo.exceptions import NodeExistsError, NoNodeError, RolledBackError

from expo_platform.errors import ExpoError
from expo_platform.speed.zookeeper import ZooKeeperSession

log = logging.getLogger("expo_platform.speed.offsets")

ROOT = "/expo"
COMMIT_ATTEMPTS = 3


def offsets_path(consumer: str, topic: str) -> str:
    """The parent node of a topic's partition offsets."""
    for name, value in (("consumer", consumer), ("topic", topic)):
        if not value or "/" in value:
            raise ExpoError(f"{name} {value!r} cannot be part of a ZooKeeper path")
    return f"{ROOT}/{consumer}/offsets/{topic}"


class ZkOffsets:
    """Read and commit a consumer's offsets in ZooKeeper; use as a context manager or close().

    Given hosts, it opens its own session (and closes it); given a `ZooKeeperSession`, it
    uses that one and leaves it open (the writer lease keeps one for the app's life).
    """

    def __init__(
        self, zookeeper: str | ZooKeeperSession, consumer: str, timeout: float = 10.0
    ) -> None:
        self.consumer = consumer
        if isinstance(zookeeper, ZooKeeperSession):
            self.session, self._owns = zookeeper, False
        else:
            self.session, self._owns = ZooKeeperSession(zookeeper, timeout), True
        self.hosts = self.session.hosts

    def close(self) -> None:
        """End the session, if it is this object's own."""
        if self._owns:
            self.session.close()

    def __enter__(self) -> ZkOffsets:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def read(self, topic: str, *, fresh: bool = False) -> dict[int, int]:
        """The committed next offset per partition; empty when nothing was committed.

        `fresh`: first catch up with the leader (ZooKeeper's sync), to see every commit made
        before the call in any session, not only in this one.
        """
        parent = offsets_path(self.consumer, topic)
        zk = self.session
        if fresh:
            zk.call(zk.client.sync, parent)
        try:
            children = zk.call(zk.client.get_children, parent)
        except NoNodeError:
            return {}
        offsets = {}
        for child in children:
            try:
                data, _ = zk.call(zk.client.get, f"{parent}/{child}")
            except NoNodeError:
                continue  # removed between the listing and the read
            offsets[int(child)] = int(data.decode("ascii"))
        return dict(sorted(offsets.items()))

    def commit(self, topic: str, offsets: Mapping[int, int]) -> None:
        """Store the next offset of each partition, all in one transaction."""
        if not offsets:
            return
        for partition, offset in offsets.items():
            if int(partition) < 0 or int(offset) < 0:
                raise ExpoError(f"invalid offset {offset} for partition {partition}")
        parent = offsets_path(self.consumer, topic)
        zk = self.session
        zk.call(zk.client.ensure_path, parent)

        def commit_once() -> list:
            # Built anew on each of kazoo's retries: a transaction commits at most once, and
            # after a lost connection the listing may have changed (values are absolute).
            existing = set(zk.client.get_children(parent))
            transaction = zk.client.transaction()
            for partition, offset in sorted(offsets.items()):
                path, value = f"{parent}/{int(partition)}", str(int(offset)).encode("ascii")
                if str(int(partition)) in existing:
                    transaction.set_data(path, value)
                else:
                    transaction.create(path, value)
            return transaction.commit()

        for attempt in range(1, COMMIT_ATTEMPTS + 1):
            results = zk.call(commit_once)
            failures = [
                r
                for r in results
                if isinstance(r, Exception) and not isinstance(r, RolledBackError)
            ]
            if not failures:
                log.debug("offsets committed", extra={"topic": topic, "offsets": dict(offsets)})
                return
            # Another writer created or deleted a node between our listing and the commit.
            if not all(isinstance(f, NodeExistsError | NoNodeError) for f in failures):
                raise ExpoError(f"ZooKeeper refused the offsets of {topic!r}: {failures}")
            log.info("offset commit raced, retrying", extra={"topic": topic, "attempt": attempt})
        raise ExpoError(f"could not commit the offsets of {topic!r} in {COMMIT_ATTEMPTS} attempts")

    def delete(self, topic: str) -> None:
        """Forget the committed offsets of a topic (to replay it from the start)."""
        with contextlib.suppress(NoNodeError):
            zk = self.session
            zk.call(zk.client.delete, offsets_path(self.consumer, topic), recursive=True)
