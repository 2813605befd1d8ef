"""One ZooKeeper session: the kazoo client's set-up, bounded calls and the platform's errors.

Everything the platform does in ZooKeeper goes through `ZooKeeperSession`: the stream's
offsets (`offsets.ZkOffsets`), the writer lease (`lease.WriterLease`, which keeps one session
for the life of the streaming app) and the local ZooKeeper's readiness probe. It

- builds the kazoo client from the hosts string and starts it within `timeout` seconds;
- makes calls with bounded retries (a lost connection is retried, not waited out), so a
  ZooKeeper that is down or frozen is an error within bounds, never a hang;
- translates kazoo's errors into `ExpoError`s that name the hosts; `NoNodeError` and
  `NodeExistsError` pass through, as answers the caller handles;
- ends the session on `close()` or at the end of a `with` block.

A session is short-lived (`reconnect=False`: its connection retries are bounded, and once
they run out the session is closed for good) or long-lived (`reconnect=True`: it reconnects
for as long as it runs, as a region's membership and lease must outlive a ZooKeeper outage).
Its ephemeral nodes live as long as the session: once ZooKeeper expires it (`session_id`
changes, listeners see `KazooState.LOST`), they are gone.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import (
    ConnectionClosedError,
    ConnectionLoss,
    KazooException,
    NodeExistsError,
    NoNodeError,
    OperationTimeoutError,
    SessionExpiredError,
)
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.protocol.states import KeeperState
from kazoo.retry import RetryFailedError

from expo_platform.errors import ExpoError

log = logging.getLogger("expo_platform.speed.zookeeper")
# kazoo logs every (re)connection at INFO; only its warnings matter to the platform.
_kazoo_log = logging.getLogger("expo_platform.speed.zookeeper.kazoo")
_kazoo_log.setLevel(logging.WARNING)
# A readiness probe expects refused connections: nothing of kazoo's is worth a line there.
_quiet_log = logging.getLogger("expo_platform.speed.zookeeper.kazoo.quiet")
_quiet_log.setLevel(logging.CRITICAL)

T = TypeVar("T")
# Calls: a lost connection is retried three times, then reported.
COMMAND_RETRY = {"max_tries": 3, "delay": 0.2, "max_delay": 2.0, "ignore_expire": False}
# Connecting: a short-lived session tries three times, a long-lived one until it is closed.
CONNECTION_RETRY = {"max_tries": 3, "delay": 0.2, "max_delay": 2.0, "ignore_expire": False}
RECONNECT_RETRY = {"max_tries": -1, "delay": 0.5, "max_delay": 5.0}
# The connection is gone, for now or for good: ZooKeeper is down, frozen or too far.
_UNREACHABLE = (
    ConnectionLoss,
    ConnectionClosedError,
    OperationTimeoutError,
    RetryFailedError,
    KazooTimeoutError,
)


def zookeeper_error(hosts: str, exc: BaseException, what: str = "") -> ExpoError:
    """The platform's error for a kazoo failure: one line that names the hosts."""
    doing = f" ({what})" if what else ""
    detail = f"{type(exc).__name__} {exc}".strip()
    if isinstance(exc, _UNREACHABLE):
        return ExpoError(f"ZooKeeper at {hosts} is unreachable{doing}: {detail}")
    if isinstance(exc, SessionExpiredError):
        return ExpoError(f"ZooKeeper at {hosts} expired the session{doing}: {detail}")
    return ExpoError(f"ZooKeeper at {hosts} failed{doing}: {detail}")


class ZooKeeperSession:
    """A started ZooKeeper session; use as a context manager or close().

    `timeout` is the session timeout, and how long the start and each call wait for a
    connection. `listener`, if given, sees every state change (`KazooState`), from the start.
    """

    def __init__(
        self,
        hosts: str,
        timeout: float = 10.0,
        *,
        reconnect: bool = False,
        quiet: bool = False,
        listener: Callable[[str], object] | None = None,
    ) -> None:
        self.hosts, self.timeout, self.reconnect = hosts, timeout, reconnect
        self._connected = threading.Event()
        try:
            self._client = KazooClient(
                hosts=hosts,
                timeout=timeout,
                connection_retry=dict(RECONNECT_RETRY if reconnect else CONNECTION_RETRY),
                command_retry=dict(COMMAND_RETRY),
                logger=_quiet_log if quiet else _kazoo_log,
            )
        except ValueError as exc:
            raise ExpoError(f"ZooKeeper hosts {hosts!r} are not host:port pairs: {exc}") from None
        self._client.add_listener(self._on_state)
        if listener is not None:
            self._client.add_listener(listener)
        try:
            self._client.start(timeout=timeout)
        except (KazooTimeoutError, KazooException, OSError) as exc:
            self.close()
            raise ExpoError(
                f"ZooKeeper at {hosts} is unreachable (no session in {timeout:.0f}s): {exc}"
            ) from None

    # -- the session ---------------------------------------------------------------------------

    @property
    def client(self) -> KazooClient:
        """The kazoo client, for what this class does not wrap; call it through `call`."""
        return self._client

    @property
    def connected(self) -> bool:
        """Whether the session is connected now."""
        return self._client.connected

    @property
    def session_id(self) -> int | None:
        """ZooKeeper's id of the session (a node's `ephemeralOwner`); None while disconnected.

        It changes when ZooKeeper expired the session and a long-lived one started another.
        """
        client_id = self._client.client_id
        return None if client_id is None else client_id[0]

    def close(self) -> None:
        """End the session: its ephemeral nodes go. A broken session must not hide the error
        that came before, so closing never raises."""
        try:
            self._client.stop()
            self._client.close()
        except Exception as exc:
            log.debug("zookeeper close failed", extra={"error": str(exc)})

    def __enter__(self) -> ZooKeeperSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- calls --------------------------------------------------------------------------------

    def call(self, func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`func(*args, **kwargs)` (a kazoo call, or a function of several) with bounded
        retries. `NoNodeError` and `NodeExistsError` pass through; every other kazoo failure
        becomes an `ExpoError` that names the hosts.

        A retried write may have been applied before its connection was lost: write absolute
        values, and expect `NodeExistsError` from a create that did go through.
        """

        def attempt() -> T:
            # While reconnecting, kazoo queues a request until the connection is back, however
            # long that takes: wait for the connection within bounds instead.
            if self._client.client_state == KeeperState.CONNECTING and not (
                self._connected.wait(self.timeout)
            ):
                raise ConnectionLoss(f"no connection in {self.timeout:.0f}s")
            return func(*args, **kwargs)

        try:
            return self._client.retry(attempt)
        except (NoNodeError, NodeExistsError):
            raise
        except (KazooException, KazooTimeoutError) as exc:
            path = args[0] if args and isinstance(args[0], str) else ""
            what = f"{getattr(func, '__name__', '')} {path}".strip()
            raise zookeeper_error(self.hosts, exc, what) from None

    def get_text(self, path: str) -> str:
        """A node's data as text; empty when the node does not exist."""
        try:
            return self.call(self._client.get, path)[0].decode()
        except NoNodeError:
            return ""

    def set_text(self, path: str, value: str) -> None:
        """Create or overwrite a persistent node."""
        try:
            self.call(self._client.set, path, value.encode())
        except NoNodeError:
            try:
                self.call(self._client.create, path, value.encode(), makepath=True)
            except NodeExistsError:  # created meanwhile, or by a retried create: set it
                self.call(self._client.set, path, value.encode())

    def children(self, path: str) -> list[str]:
        """A node's children, sorted; empty when the node does not exist."""
        try:
            return sorted(self.call(self._client.get_children, path))
        except NoNodeError:
            return []

    def _on_state(self, state: str) -> None:
        if state == KazooState.CONNECTED:
            self._connected.set()
        else:
            self._connected.clear()
