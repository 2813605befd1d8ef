"""Retrying the speed layer's writes to the store and ZooKeeper; every write is idempotent."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from expo_platform.errors import ExpoError

log = logging.getLogger("expo_platform.speed.retry")

T = TypeVar("T")
RETRY_LIMIT_S = 900.0  # give up on the store or ZooKeeper after 15 minutes of failures


def retry(what: str, action: Callable[[], T], limit_s: float = RETRY_LIMIT_S) -> T:
    """Run `action` until it succeeds, backing off up to 30 s; writes are idempotent."""
    started, delay = time.monotonic(), 1.0
    while True:
        try:
            return action()
        except ExpoError as exc:
            if time.monotonic() - started > limit_s:
                raise
            log.warning("%s failed, retrying in %.0fs: %s", what, delay, exc)
            time.sleep(delay)
            delay = min(delay * 2, 30.0)
