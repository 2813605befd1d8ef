"""Hour arithmetic: every hour is the half-open UTC interval [H, H + 1h)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

from pyspark.sql import Column
from pyspark.sql import functions as F

from expo_platform.errors import ExpoError

HOUR_MS = 3_600_000
ONE_HOUR = timedelta(hours=1)

# The partition key, the landing folder suffix and the Hive partition value share one format
# (KEY_FORMAT in Python, SPARK_KEY_FORMAT in Spark's datetime patterns; Spark runs in UTC).
KEY_FORMAT = "%Y-%m-%d-%H"
SPARK_KEY_FORMAT = "yyyy-MM-dd-HH"
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


def event_hour_index(ts: Column | str) -> Column:
    """The number of the hour of an epoch-millisecond column, `floor(ts / HOUR_MS)`, the
    hour `event_hour_col` names: what a landing hour's beacons are compared with, as it
    holds for any `ts` (Spark's timestamps end in the year 294,247)."""
    column = F.col(ts) if isinstance(ts, str) else ts
    return F.floor(column / HOUR_MS)


# The first millisecond after the year 9999: a later hour has no partition name (and Spark's
# date expressions overflow for ts above about 9.22e15).
END_OF_NAMED_HOURS_MS = 253_402_300_800_000


def has_event_hour(ts: Column | str) -> Column:
    """Whether an epoch-millisecond column falls in an hour `event_hour_col` can name: after
    1970 and before the year 10000."""
    column = F.col(ts) if isinstance(ts, str) else ts
    return (column > 0) & (column < END_OF_NAMED_HOURS_MS)


def event_hour_col(ts: Column | str) -> Column:
    """The partition value of the hour of an epoch-millisecond column, `2026-03-02-05`
    (`hour_key` of `hour_of_ms`): the event hour that files are landed and kept by."""
    return F.date_format(F.timestamp_millis(ts), SPARK_KEY_FORMAT)
