"""Hour arithmetic: every hour is the half-open UTC interval [H, H + 1h)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

from expo_platform.errors import ExpoError

HOUR_MS = 3_600_000
ONE_HOUR = timedelta(hours=1)

# The partition key, the landing folder suffix and the Hive partition value share one format.
KEY_FORMAT = "%Y-%m-%d-%H"
_HOUR_TEXT = re.compile(r"^(\d{4})-(\d{2})-(\d{2})[T -](\d{2})(?::00(?::00)?Z?)?$")


def parse_hour(text: str) -> datetime:
    """Parse `2026-03-02T05`, `2026-03-02-05` or `2026-03-02T05:00:00Z` into a UTC hour."""
    match = _HOUR_TEXT.match(text.strip())
    if not match:
        raise ExpoError(f"not an hour: {text!r} (expected YYYY-MM-DDTHH, e.g. 2026-03-02T05)")
    try:
        return datetime(*(int(g) for g in match.groups()), tzinfo=UTC)
    except ValueError as exc:
        raise ExpoError(f"not an hour: {text!r} ({exc})") from None


def hour_key(hour: datetime) -> str:
    """The partition key of an hour: `2026-03-02-05`."""
    return hour.astimezone(UTC).strftime(KEY_FORMAT)


def hour_iso(hour: datetime) -> str:
    """The stored form of an hour: `2026-03-02T05:00:00Z`."""
    return hour.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def hour_label(hour: datetime) -> str:
    """The command-line form of an hour: `2026-03-02T05`."""
    return hour.astimezone(UTC).strftime("%Y-%m-%dT%H")


def hour_start_ms(hour: datetime) -> int:
    """Epoch milliseconds of the hour's first instant."""
    return int(hour.timestamp() * 1000)


def hour_of_ms(ts_ms: int) -> datetime:
    """The hour that contains an epoch-millisecond timestamp."""
    return datetime.fromtimestamp((ts_ms // HOUR_MS) * HOUR_MS / 1000, tz=UTC)


def hour_range(first: datetime, last: datetime) -> Iterator[datetime]:
    """Every hour from `first` to `last`, both included."""
    if last < first:
        raise ExpoError(f"empty hour range: {hour_label(first)} is after {hour_label(last)}")
    hour = first
    while hour <= last:
        yield hour
        hour += ONE_HOUR


def truncate_hour(moment: datetime) -> datetime:
    """The hour that contains `moment`."""
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
