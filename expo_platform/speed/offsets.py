"""The streaming app's Kafka offsets in ZooKeeper: `/expo/<consumer>/offsets/<topic>/<partition>`.

Each node holds the next offset to read, as ASCII digits. A commit writes every partition of
one micro-batch in a single ZooKeeper transaction, so readers never see half a batch.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping

from kazoo.client import KazooClient
from kazoo.exceptions import (
    KazooException,
    NodeExistsError,
    NoNodeError,
    RolledBackError,
    ZookeeperError,
)
from kazoo.handlers.threading import KazooTimeoutError

from expo_platform.errors import ExpoError

log = logging.getLogger("expo_platform.speed.offsets")
# kazoo logs every (re)connection at INFO; only its warnings matter to the platform.
_kazoo_log = logging.getLogger("expo_platform.speed.offsets.kazoo")
_kazoo_log.setLevel(logging.WARNING)

ROOT = "/expo"
COMMIT_ATTEMPTS = 3


def offsets_path(consumer: str, topic: str) -> str:
    """The parent node of a topic's partition offsets."""
    for name, value in (("consumer", consumer), ("topic", topic)):
        if not value or "/" in value:
            raise ExpoError(f"{name} {value!r} cannot be part of a ZooKeeper path")
    return f"{ROOT}/{consumer}/offsets/{topic}"


class ZkSession:
    """A ZooKeeper session with bounded retries; use as a context manager or close()."""

    def __init__(self, hosts: str, timeout: float = 10.0) -> None:
        self.hosts = hosts
        # Bounded retries: an unreachable ZooKeeper is an error to report, not to wait out.
        retry = {"max_tries": 3, "delay": 0.2, "max_delay": 2.0, "ignore_expire": False}
        self._client = KazooClient(
            hosts=hosts,
            timeout=timeout,
            connection_retry=dict(retry),
            command_retry=dict(retry),
            logger=_kazoo_log,
        )
        try:
            self._client.start(timeout=timeout)
        except (KazooTimeoutError, KazooException, OSError) as exc:
            close_client(self._client)
            raise ExpoError(
                f"ZooKeeper at {hosts} is unreachable (no session in {timeout:.0f}s): {exc}"
            ) from None

    def get_text(self, path: str) -> str:
        """A node's data as text; empty when the node does not exist."""
        try:
            return self._call(self._client.get, path)[0].decode()
        except NoNodeError:
            return ""

    def set_text(self, path: str, value: str) -> None:
        """Create or overwrite a persistent node."""
        try:
            self._call(self._client.set, path, value.encode())
        except NoNodeError:
            self._call(self._client.create, path, value.encode(), makepath=True)

    def children(self, path: str) -> list[str]:
        """A node's children, sorted; empty when the node does not exist."""
        try:
            return sorted(self._call(self._client.get_children, path))
        except NoNodeError:
            return []

    def close(self) -> None:
        """End the ZooKeeper session."""
        close_client(self._client)

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, func, *args, **kwargs):
        try:
            return self._client.retry(func, *args, **kwargs)
        except (NoNodeError, NodeExistsError):
            raise
        except (KazooTimeoutError, KazooException, ZookeeperError) as exc:
            raise ExpoError(
                f"ZooKeeper at {self.hosts} failed: {type(exc).__name__} {exc}"
            ) from None


def close_client(client: KazooClient) -> None:
    """Stop and close a kazoo client; a broken session must not hide the error before it."""
    try:
        client.stop()
        client.close()
    except Exception as exc:
        log.debug("zookeeper close failed", extra={"error": str(exc)})


class ZkOffsets(ZkSession):
    """Read and commit a consumer's offsets in ZooKeeper; use as a context manager or close()."""

    def __init__(self, hosts: str, consumer: str, timeout: float = 10.0) -> None:
        self.consumer = consumer
        super().__init__(hosts, timeout)

    def read(self, topic: str) -> dict[int, int]:
        """The committed next offset per partition; empty when nothing was committed."""
        parent = offsets_path(self.consumer, topic)
        try:
            children = self._call(self._client.get_children, parent)
        except NoNodeError:
            return {}
        offsets = {}
        for child in children:
            try:
                data, _ = self._call(self._client.get, f"{parent}/{child}")
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
        self._call(self._client.ensure_path, parent)

        def commit_once() -> list:
            # Built anew on each of kazoo's retries: a transaction commits at most once, and
            # after a lost connection the listing may have changed (values are absolute).
            existing = set(self._client.get_children(parent))
            transaction = self._client.transaction()
            for partition, offset in sorted(offsets.items()):
                path, value = f"{parent}/{int(partition)}", str(int(offset)).encode("ascii")
                if str(int(partition)) in existing:
                    transaction.set_data(path, value)
                else:
                    transaction.create(path, value)
            return transaction.commit()

        for attempt in range(1, COMMIT_ATTEMPTS + 1):
            results = self._call(commit_once)
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
            self._call(self._client.delete, offsets_path(self.consumer, topic), recursive=True)
